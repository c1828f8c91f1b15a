"""The GGML types of 32-weight blocks, and the float types.

- ``Q4_0``: fp16 ``d``, 16 bytes of nibbles; ``x = d · (q − 8)``. Weight j of the block sits in
  the low nibble of byte j (j < 16) or the high nibble of byte j − 16.
- ``Q4_1``: fp16 ``d``, fp16 ``m``, the same nibbles; ``x = d · q + m``.
- ``Q5_0`` / ``Q5_1``: as Q4_0 / Q4_1 with a fifth bit per weight in 4 bytes ``qh`` (bit j of
  the little-endian word is weight j's); ``x = d · (q − 16)`` / ``x = d · q + m``.
- ``Q8_0``: fp16 ``d``, 32 int8 ``q``; ``x = d · q``.
- ``IQ4_NL``: fp16 ``d``, Q4_0's nibbles indexing llama.cpp's 16 non-uniform levels;
  ``x = d · levels[q]`` (GPTQ rounds each weight to the nearest level, grid ``nl4``).

GPTQ solves on exactly these grids (``signed`` for Q4_0/Q5_0/Q8_0 with codes offset by
2^(bits−1), ``min`` for Q4_1/Q5_1, 32 columns per group; see :mod:`llmshrink.quant.grid`), so
packing here only rearranges bytes: the file dequantizes to the solution bit for bit. Float
types (F32, F16, BF16) are written as is.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from gguf import LlamaFileType
from gguf import quants as gq

from ..quant.config import QuantConfig
from ..quant.gptq import QuantResult
from .ggml_base import Blocks, GGMLType, fp16_bytes, nibbles


class _Float(GGMLType):
    def encode(self, w: torch.Tensor, cfg: QuantConfig | None = None) -> np.ndarray:
        return w.detach().float().cpu().numpy()


class F32(_Float):
    name, ggml, file_type, exported = "f32", T.F32, LlamaFileType.ALL_F32, False


class F16(_Float):
    name, ggml, file_type = "f16", T.F16, LlamaFileType.MOSTLY_F16

    def encode(self, w: torch.Tensor, cfg: QuantConfig | None = None) -> np.ndarray:
        return super().encode(w).astype(np.float16)


class BF16(_Float):
    """Raw bytes (round to nearest even), as gguf-py writes BF16."""

    name, ggml, file_type = "bf16", T.BF16, LlamaFileType.MOSTLY_BF16

    def encode(self, w: torch.Tensor, cfg: QuantConfig | None = None) -> np.ndarray:
        return gq.quantize(super().encode(w), T.BF16)


class _Signed(Blocks):
    grid, symmetric = "signed", True

    def check_signed(self, res: QuantResult) -> int:
        half = 1 << (self.bits - 1)
        if res.mins is not None or not torch.all(res.zeros == half):
            raise ValueError(f"{self.name} needs a signed grid (zero point {half})")
        return half


class Q8_0(_Signed):
    name, ggml, file_type, bits = "q8_0", T.Q8_0, LlamaFileType.MOSTLY_Q8_0, 8

    def parts(self, q, res):
        return [fp16_bytes(res.scales.T), (q - self.check_signed(res)).astype(np.int8).view(np.uint8)]


class Q4_0(_Signed):
    name, ggml, file_type, bits = "q4_0", T.Q4_0, LlamaFileType.MOSTLY_Q4_0, 4

    def parts(self, q, res):
        self.check_signed(res)
        return [fp16_bytes(res.scales.T), nibbles(q)]


class Q4_1(Blocks):
    name, ggml, file_type, bits, grid = "q4_1", T.Q4_1, LlamaFileType.MOSTLY_Q4_1, 4, "min"

    def parts(self, q, res):
        if res.mins is None:
            raise ValueError(f"{self.name} needs a min grid")
        return [fp16_bytes(res.scales.T), fp16_bytes(res.mins.T), nibbles(q)]




def _fifth_bits(q: np.ndarray) -> np.ndarray:
    """Codes [rows, blocks, 32] in 0..31 -> [rows, blocks, 4]: bit j of the little-endian word is
    bit 4 of weight j."""
    return np.packbits((q >> 4).astype(np.uint8) & 1, axis=-1, bitorder="little")


class Q5_0(_Signed):
    name, ggml, file_type, bits = "q5_0", T.Q5_0, LlamaFileType.MOSTLY_Q5_0, 5

    def parts(self, q, res):
        self.check_signed(res)
        return [fp16_bytes(res.scales.T), _fifth_bits(q), nibbles(q & 15)]


class Q5_1(Q4_1):
    name, ggml, file_type, bits = "q5_1", T.Q5_1, LlamaFileType.MOSTLY_Q5_1, 5

    def parts(self, q, res):
        d, m, _ = super().parts(q, res)
        return [d, m, _fifth_bits(q), nibbles(q & 15)]


class IQ4_NL(Blocks):
    name, ggml, file_type, bits, grid, symmetric = "iq4_nl", T.IQ4_NL, LlamaFileType.MOSTLY_IQ4_NL, 4, "nl4", True
    exported = False  # offered as llama.cpp's ``iq4_nl`` mix (``gguf_mix``)

    def parts(self, q, res):
        if res.levels is None:
            raise ValueError("iq4_nl needs its table grid (nl4)")
        return [fp16_bytes(res.scales.T), nibbles(q)]
