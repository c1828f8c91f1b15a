"""The GGML tensor type base: one class per type (the grid GPTQ solves on, packing solved codes
into the type's blocks, the reader's dequantization to verify them), registered by name, and
the byte helpers the types share. The types themselves are in :mod:`.ggml_legacy` (32-weight
blocks) and :mod:`.ggml_k` (K-quant super-blocks of 256); :mod:`.ggml` is the lookup. Pure
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

BLOCK = 32  # weights per block of the legacy types (ggml's QK4_0, QK8_0, ...)
QK_K = 256  # weights per super-block of the K-quants

GGML_TYPES: dict[str, GGMLType] = {}

class GGMLType:
    """One GGML tensor type; subclasses register themselves under ``name``."""

    name: ClassVar[str]
    ggml: ClassVar[T]
    file_type: ClassVar[LlamaFileType]
    bits: ClassVar[int | None] = None  # None: a float type
    grid: ClassVar[str | None] = None  # the grid kind GPTQ targets (see quant.grid)
    exported: ClassVar[bool] = True  # offered as ``--type``
    block: ClassVar[int] = BLOCK  # weights per GGML block (a row's width must be a multiple)
    group: ClassVar[int] = BLOCK  # columns per scale (the group size GPTQ solves with)

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


def fp16_bytes(x: torch.Tensor) -> np.ndarray:
    """[rows, blocks] float32 (already fp16-representable) -> [rows, blocks, 2] uint8."""
    h = x.to(torch.float16).contiguous()
    if not torch.equal(h.float(), x.float()):
        raise ValueError("block scales must be fp16-representable: solve on the GGML grid")
    return h.cpu().numpy().view(np.uint8).reshape(*x.shape, 2)


def nibbles(q: np.ndarray) -> np.ndarray:
    """Codes [rows, blocks, 32] in 0..15 -> [rows, blocks, 16] bytes (low: j, high: j + 16)."""
    return (q[..., :16] | (q[..., 16:] << 4)).astype(np.uint8)


def is_blockwise(g_idx: torch.Tensor, in_features: int, group: int = BLOCK, block: int = BLOCK) -> bool:
    """Whether each group is ``group`` consecutive input columns, as GGML blocks (of ``block``
    weights, a multiple of ``group``) store them."""
    want = torch.arange(in_features, dtype=torch.int32, device=g_idx.device) // group
    return in_features % block == 0 and torch.equal(g_idx.to(torch.int32), want)


class Blocks(GGMLType):
    """A block-quantized type: ``pack`` writes a solution on its grid as it is."""

    symmetric: ClassVar[bool] = False  # the grid's zero point is fixed (signed grids)

    def quant_config(self, method: str = "rtn", *, act_order: bool = False, damp: float = 0.01,
                     mse: bool = True) -> QuantConfig:
        return QuantConfig(method=method, bits=self.bits, group_size=self.group, sym=self.symmetric,
                           grid=self.grid, act_order=act_order, static_groups=act_order, damp=damp, mse=mse)

    def fits(self, width: int) -> bool:
        """Whether a row of ``width`` weights can be stored in this type's blocks."""
        return width % self.block == 0

    def encode(self, w: torch.Tensor, cfg: QuantConfig | None = None) -> np.ndarray:
        if not self.fits(w.shape[1]):
            raise UserError(f"a weight of width {w.shape[1]} cannot be stored as {self.name} (blocks of "
                            f"{self.block}): choose f16 or bf16")
        on_grid = cfg is not None and cfg.bits == self.bits and cfg.grid == self.grid
        return self.pack(rtn_quantize(w.float(), cfg if on_grid else self.quant_config()))

    def parts(self, q: np.ndarray, res: QuantResult) -> list[np.ndarray]:
        """The block's bytes in file order, each [out, blocks, n] uint8 (codes ``q``: [out, blocks,
        weights per block])."""
        raise NotImplementedError

    def pack(self, res: QuantResult) -> np.ndarray:
        """A solution on this type's grid -> the tensor's bytes, uint8 [out, in / block · type_size]."""
        out_f, in_f = res.q.shape
        if not is_blockwise(res.g_idx, in_f, self.group, self.block):
            raise ValueError(f"the solution's groups are not consecutive groups of {self.group} columns in "
                             f"rows of whole {self.block}-weight blocks")
        q = res.q.to(torch.int64).cpu().numpy().reshape(out_f, in_f // self.block, self.block)
        blocks = np.concatenate(self.parts(q, res), axis=-1)
        assert blocks.shape[-1] == gq.GGML_QUANT_SIZES[self.ggml][1]
        return np.ascontiguousarray(blocks.reshape(out_f, -1))


