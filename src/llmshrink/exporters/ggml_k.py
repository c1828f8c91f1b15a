"""The K-quant GGML types: super-blocks of 256 weights in groups of 32 (Q4_K, Q5_K) or 16 (Q2_K,
Q3_K, Q6_K), each group's scale an integer times the super-block's fp16 ``d`` (ggml-quants.c's
``block_q*_K``; gguf-py's ``quants.py`` dequantizes them, and the tests check against it):

- ``Q2_K``: 16 bytes of 4-bit scale (low) and 4-bit min (high), 64 bytes of 2-bit codes, fp16
  ``d``, fp16 ``dmin``; ``x = d·sc · q − dmin·m``.
- ``Q3_K``: 32 bytes of high bits, 64 bytes of 2-bit low parts, 12 bytes of 6-bit scales stored
  plus 32, fp16 ``d``; ``x = d·(sc − 32) · (q − 4)``.
- ``Q4_K`` / ``Q5_K``: fp16 ``d``, fp16 ``dmin``, 12 bytes of eight 6-bit scales and mins, (Q5_K:
  32 bytes of fifth bits,) 128 bytes of nibbles; ``x = d·sc · q − dmin·m``.
- ``Q6_K``: 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16 int8 scales, fp16 ``d``;
  ``x = d·sc · (q − 32)``.

GPTQ solves on the two-level grids of :mod:`llmshrink.quant.grid` (``k_min4``, ``k_min6``,
``k_signed6``, ``k_signed8``), whose results carry ``d`` (and ``dmin``) per group: packing
recovers each group's integer scale exactly (``scale / d``) and only rearranges bits.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from gguf import LlamaFileType

from ..quant.gptq import QuantResult
from .ggml_base import QK_K, Blocks, fp16_bytes, nibbles


def _exact_ints(num: torch.Tensor, den: torch.Tensor, lo: int, hi: int, what: str) -> np.ndarray:
    n = num / den
    if not torch.equal(n, n.round()) or n.min() < lo or n.max() > hi:
        raise ValueError(f"{what} are not integers in [{lo}, {hi}] times the super-block's unit: solve on the "
                         "type's K grid")
    return n.to(torch.int64).cpu().numpy()


class _K(Blocks):
    block = QK_K
    exported = False  # offered through the mixes of ``gguf_mix`` (``--type q4_k_m``), as llama.cpp does
    scale_bits: ClassVar[int]

    @property
    def groups(self) -> int:
        return QK_K // self.group

    def units(self, res: QuantResult, unit: torch.Tensor | None, per_group: torch.Tensor,
              lo: int, hi: int, what: str) -> tuple[np.ndarray, np.ndarray]:
        """The super-blocks' fp16 unit [out, supers, 2] (bytes) and the groups' integers
        [out, supers, groups] such that ``per_group = unit · integer``."""
        if unit is None:
            raise ValueError(f"{self.name} needs a K grid ({self.grid})")
        u = unit.T  # [out, groups]
        sup = u[:, ::self.groups]
        if not torch.equal(u, sup.repeat_interleave(self.groups, dim=1)):
            raise ValueError(f"{self.name}: the groups of a super-block do not share one unit")
        ints = _exact_ints(per_group.T, u, lo, hi, what)
        return fp16_bytes(sup), ints.reshape(u.shape[0], -1, self.groups)

    def scales(self, res: QuantResult):
        return self.units(res, res.d, res.scales, 0, (1 << self.scale_bits) - 1, "scales")

    def scales_and_mins(self, res: QuantResult):
        """(d, scales, dmin, mins) of a K min grid: fp16 units [out, supers, 2], integers [out, supers, groups]."""
        if res.mins is None:
            raise ValueError(f"{self.name} needs a K min grid")
        return (*self.scales(res), *self.units(res, res.dmin, -res.mins, 0, (1 << self.scale_bits) - 1, "mins"))


def _packed_6bit(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins [.., 8] -> the 12 bytes ggml's ``get_scale_min_k4`` reads."""
    lo = sc[..., :4] | ((sc[..., 4:] >> 4) << 6)
    mid = m[..., :4] | ((m[..., 4:] >> 4) << 6)
    hi = (sc[..., 4:] & 15) | ((m[..., 4:] & 15) << 4)
    return np.concatenate([lo, mid, hi], axis=-1).astype(np.uint8)


def _interleaved(q: np.ndarray, bits: int, run: int) -> np.ndarray:
    """Codes [.., n] -> bytes holding ``8 / bits`` codes each: byte b of each run of ``run`` bytes
    holds codes b, b + run, b + 2·run, ... at shifts 0, bits, 2·bits, ... (ggml's K layouts)."""
    per = 8 // bits
    q = q.reshape(*q.shape[:-1], -1, per, run)  # [.., chunks, per, run]
    out = np.zeros((*q.shape[:-2], run), dtype=np.int64)
    for k in range(per):
        out |= (q[..., k, :] & ((1 << bits) - 1)) << (bits * k)
    return out.reshape(*out.shape[:-2], -1).astype(np.uint8)


class Q4_K(_K):
    name, ggml, file_type, bits, grid, group, scale_bits = ("q4_k", T.Q4_K, LlamaFileType.MOSTLY_Q4_K_S, 4,
                                                            "k_min6", 32, 6)

    def parts(self, q, res):
        d, sc, dmin, m = self.scales_and_mins(res)
        return [d, dmin, _packed_6bit(sc, m), *self.codes(q)]

    def codes(self, q: np.ndarray) -> list[np.ndarray]:
        return [_interleaved(q, 4, 32)]


class Q5_K(Q4_K):
    name, ggml, file_type, bits = "q5_k", T.Q5_K, LlamaFileType.MOSTLY_Q5_K_S, 5

    def codes(self, q):  # the fifth bits, then the low nibbles as Q4_K lays them
        return [_interleaved(q >> 4, 1, 32), _interleaved(q & 15, 4, 32)]


class Q2_K(_K):
    name, ggml, file_type, bits, grid, group, scale_bits = ("q2_k", T.Q2_K, LlamaFileType.MOSTLY_Q2_K, 2,
                                                            "k_min4", 16, 4)

    def parts(self, q, res):
        d, sc, dmin, m = self.scales_and_mins(res)
        codes = _interleaved(q.reshape(*q.shape[:-1], 2, 128), 2, 32).reshape(*q.shape[:-1], 64)
        return [(sc | (m << 4)).astype(np.uint8), codes, d, dmin]


class _KSigned(_K):
    symmetric = True

    def scales(self, res: QuantResult):
        half = 1 << (self.bits - 1)
        if res.mins is not None or not torch.all(res.zeros == half):
            raise ValueError(f"{self.name} needs a signed K grid (zero point {half})")
        top = 1 << (self.scale_bits - 1)
        return self.units(res, res.d, res.scales, -top, top - 1, "scales")


class Q3_K(_KSigned):
    name, ggml, file_type, bits, grid, group, scale_bits = ("q3_k", T.Q3_K, LlamaFileType.MOSTLY_Q3_K_S, 3,
                                                            "k_signed6", 16, 6)

    def parts(self, q, res):
        d, sc = self.scales(res)
        s = sc + 32  # [.., 16] in 0..63: low nibbles in bytes 0..7 (k and k + 8), high pairs in 8..11
        low = (s[..., :8] & 15) | ((s[..., 8:] & 15) << 4)
        high = _interleaved(s >> 4, 2, 4)
        hmask = _interleaved(q >> 2, 1, 32)
        codes = _interleaved(q.reshape(*q.shape[:-1], 2, 128) & 3, 2, 32).reshape(*q.shape[:-1], 64)
        return [hmask, codes, low.astype(np.uint8), high, d]


class Q6_K(_KSigned):
    name, ggml, file_type, bits, grid, group, scale_bits = ("q6_k", T.Q6_K, LlamaFileType.MOSTLY_Q6_K, 6,
                                                            "k_signed8", 16, 8)

    def parts(self, q, res):
        d, sc = self.scales(res)
        halves = q.reshape(*q.shape[:-1], 2, 128)  # each half: 4 runs of 32
        ql = _interleaved(halves & 15, 4, 64).reshape(*q.shape[:-1], 128)
        qh = _interleaved(halves >> 4, 2, 32).reshape(*q.shape[:-1], 64)
        return [ql, qh, sc.astype(np.int8).view(np.uint8), d]


class IQ4_XS(_K):
    """256 weights = 8 groups of 32: fp16 ``d``, 16 bits of scales' high pairs, 4 bytes of their
    low nibbles, 128 bytes of 4-bit indices into IQ4_NL's table; ``x = d·(ls − 32) · levels[q]``."""

    name, ggml, file_type, bits, grid, group, scale_bits = ("iq4_xs", T.IQ4_XS, LlamaFileType.MOSTLY_IQ4_XS, 4,
                                                            "k_nl4", 32, 6)
    symmetric = True

    def parts(self, q, res):
        if res.levels is None:
            raise ValueError("iq4_xs needs its table K grid (k_nl4)")
        d, sc = self.units(res, res.d, res.scales, -32, 31, "scales")
        ls = sc + 32  # [.., 8] in 0..63
        low = (ls[..., 0::2] & 15) | ((ls[..., 1::2] & 15) << 4)
        high = sum(((ls[..., k] >> 4) & 3) << (2 * k) for k in range(8))
        high = np.stack([high & 255, high >> 8], axis=-1)
        return [d, high.astype(np.uint8), low.astype(np.uint8), nibbles(q.reshape(*q.shape[:-1], 8, 32)).reshape(
            *q.shape[:-1], 128)]
