"""GGML tensor types, one class per type: the grid GPTQ solves on, packing solved codes into the
type's blocks, and the reader's dequantization to verify them.

A GGUF quantized row is a sequence of blocks of 32 consecutive weights (ggml's ``QK4_0``,
``QK4_1``, ``QK8_0``):

- ``Q4_0``: fp16 ``d``, 16 bytes of nibbles; ``x = d · (q − 8)``. Weight j of the block sits in
  the low nibble of byte j (j < 16) or the high nibble of byte j − 16.
- ``Q4_1``: fp16 ``d``, fp16 ``m``, the same nibbles; ``x = d · q + m``.
- ``Q8_0``: fp16 ``d``, 32 int8 ``q``; ``x = d · q``.

GPTQ solves on exactly these grids (``signed`` for Q4_0/Q8_0 with codes offset by 2^(bits−1),
``min`` for Q4_1, 32 columns per group; see :mod:`llmshrink.quant.grid`), so packing here only
rearranges bytes: the file dequantizes to the solution bit for bit. Float types (F32, F16, BF16)
are written as is. A new type is one class here (as gguf-py's ``quants.py`` does it). Pure
numpy/torch; nothing is written to disk here.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from gguf import LlamaFileType
from gguf import quants as gq

from ..errors import UserError
from ..quant.config import QuantConfig
from ..quant.gptq import QuantResult, rtn_quantize

BLOCK = 32  # weights per block of every block type here

GGML_TYPES: dict[str, GGMLType] = {}


class GGMLType:
    """One GGML tensor type; subclasses register themselves under ``name``."""

    name: ClassVar[str]
    ggml: ClassVar[T]
    file_type: ClassVar[LlamaFileType]
    bits: ClassVar[int | None] = None  # None: a float type
    grid: ClassVar[str | None] = None  # the grid kind GPTQ targets (see quant.grid)
    exported: ClassVar[bool] = True  # offered as ``--type``

    def __init_subclass__(cls, **kw) -> None:
        super().__init_subclass__(**kw)
        if "name" in cls.__dict__:
            GGML_TYPES[cls.name] = cls()

    @property
    def quantized(self) -> bool:
        return self.bits is not None

    def quant_config(self, method: str = "rtn", *, act_order: bool = False, damp: float = 0.01,
                     mse: bool = True) -> QuantConfig | None:
        """The GPTQ/RTN settings that solve on this type's grid (None for float types): groups are
        the type's blocks (act-order runs with static groups)."""
        return None

    def encode(self, w: torch.Tensor, cfg: QuantConfig | None = None) -> np.ndarray:
        """A float weight in this type: float types as they are; block types round to nearest on
        their grid (with ``cfg``'s range search when ``cfg`` is on this grid)."""
        raise NotImplementedError

    def pack(self, res: QuantResult) -> np.ndarray:
        raise ValueError(f"{self.name} is not a block-quantized type")

    def dequantize(self, data: np.ndarray) -> np.ndarray:
        """The reader's dequantization (gguf-py, which mirrors ggml): float32 [out, in]."""
        return gq.dequantize(data, self.ggml)


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


def _fp16_bytes(x: torch.Tensor) -> np.ndarray:
    """[rows, blocks] float32 (already fp16-representable) -> [rows, blocks, 2] uint8."""
    h = x.to(torch.float16).contiguous()
    if not torch.equal(h.float(), x.float()):
        raise ValueError("block scales must be fp16-representable: solve on the GGML grid")
    return h.cpu().numpy().view(np.uint8).reshape(*x.shape, 2)


def _nibbles(q: np.ndarray) -> np.ndarray:
    """Codes [rows, blocks, 32] in 0..15 -> [rows, blocks, 16] bytes (low: j, high: j + 16)."""
    return (q[..., :16] | (q[..., 16:] << 4)).astype(np.uint8)


def is_blockwise(g_idx: torch.Tensor, in_features: int) -> bool:
    """Whether each group is 32 consecutive input columns, as GGML blocks are."""
    want = torch.arange(in_features, dtype=torch.int32, device=g_idx.device) // BLOCK
    return in_features % BLOCK == 0 and torch.equal(g_idx.to(torch.int32), want)


class _Blocks(GGMLType):
    """A type of 32-weight blocks: ``pack`` writes a solution on its grid as it is."""

    def quant_config(self, method: str = "rtn", *, act_order: bool = False, damp: float = 0.01,
                     mse: bool = True) -> QuantConfig:
        return QuantConfig(method=method, bits=self.bits, group_size=BLOCK, sym=self.grid == "signed",
                           grid=self.grid, act_order=act_order, static_groups=act_order, damp=damp, mse=mse)

    def encode(self, w: torch.Tensor, cfg: QuantConfig | None = None) -> np.ndarray:
        if w.shape[1] % BLOCK:
            raise UserError(f"a weight of width {w.shape[1]} cannot be stored as {self.name} (blocks of {BLOCK}): "
                            "choose f16 or bf16")
        on_grid = cfg is not None and cfg.bits == self.bits and cfg.grid == self.grid
        return self.pack(rtn_quantize(w.float(), cfg if on_grid else self.quant_config()))

    def body(self, q: np.ndarray, res: QuantResult) -> list[np.ndarray]:
        """The block's bytes after ``d`` (codes [out, blocks, 32])."""
        raise NotImplementedError

    def pack(self, res: QuantResult) -> np.ndarray:
        """A solution on this type's grid -> the tensor's bytes, uint8 [out, in / 32 · type_size]."""
        out_f, in_f = res.q.shape
        if not is_blockwise(res.g_idx, in_f):
            raise ValueError("the solution's groups are not consecutive blocks of 32 columns")
        q = res.q.to(torch.int64).cpu().numpy().reshape(out_f, in_f // BLOCK, BLOCK)
        blocks = np.concatenate([_fp16_bytes(res.scales.T), *self.body(q, res)], axis=-1)
        assert blocks.shape[-1] == gq.GGML_QUANT_SIZES[self.ggml][1]
        return np.ascontiguousarray(blocks.reshape(out_f, -1))


class _Signed(_Blocks):
    grid = "signed"

    def check_signed(self, res: QuantResult) -> int:
        half = 1 << (self.bits - 1)
        if res.mins is not None or not torch.all(res.zeros == half):
            raise ValueError(f"{self.name} needs a signed grid (zero point {half})")
        return half


class Q8_0(_Signed):
    name, ggml, file_type, bits = "q8_0", T.Q8_0, LlamaFileType.MOSTLY_Q8_0, 8

    def body(self, q, res):
        return [(q - self.check_signed(res)).astype(np.int8).view(np.uint8)]


class Q4_0(_Signed):
    name, ggml, file_type, bits = "q4_0", T.Q4_0, LlamaFileType.MOSTLY_Q4_0, 4

    def body(self, q, res):
        self.check_signed(res)
        return [_nibbles(q)]


class Q4_1(_Blocks):
    name, ggml, file_type, bits, grid = "q4_1", T.Q4_1, LlamaFileType.MOSTLY_Q4_1, 4, "min"

    def body(self, q, res):
        if res.mins is None:
            raise ValueError("q4_1 needs a min grid")
        return [_fp16_bytes(res.mins.T), _nibbles(q)]


EXPORT_TYPES = tuple(name for name, t in GGML_TYPES.items() if t.exported)


def ggml_type(name: str, *, internal: bool = False) -> GGMLType:
    """The type named ``name`` (``internal``: also types not offered as ``--type``, such as f32)."""
    t = GGML_TYPES.get(str(name).lower())
    if t is None or not (t.exported or internal):
        raise UserError(f"unsupported GGUF type {name!r}: use one of {', '.join(EXPORT_TYPES)}")
    return t
