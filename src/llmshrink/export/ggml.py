"""GGML tensor types: which quantization grid each targets, and packing solved codes into blocks.

A GGUF quantized row is a sequence of blocks of 32 consecutive weights (ggml's ``QK4_0``,
``QK4_1``, ``QK8_0``):

- ``Q4_0``: fp16 ``d``, 16 bytes of nibbles; ``x = d · (q − 8)``. Weight j of the block sits in
  the low nibble of byte j (j < 16) or the high nibble of byte j − 16.
- ``Q4_1``: fp16 ``d``, fp16 ``m``, the same nibbles; ``x = d · q + m``.
- ``Q8_0``: fp16 ``d``, 32 int8 ``q``; ``x = d · q``.

GPTQ solves on exactly these grids (``signed`` for Q4_0/Q8_0 with codes offset by 2^(bits−1),
``min`` for Q4_1, 32 columns per group; see :mod:`llmshrink.quant.grid`), so packing here only
rearranges bytes: the file dequantizes to the solution bit for bit. Float types (F32, F16, BF16)
are written as is. Pure numpy/torch; nothing is written to disk here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from gguf import LlamaFileType
from gguf import quants as gq

from ..errors import UserError
from ..quant.gptq import QuantResult

BLOCK = 32  # weights per block of every type here


@dataclass(frozen=True)
class GGMLType:
    name: str
    ggml: T
    file_type: LlamaFileType
    bits: int | None = None  # None: a float type
    grid: str | None = None  # the grid kind GPTQ targets (see quant.grid)

    @property
    def quantized(self) -> bool:
        return self.bits is not None


GGML_TYPES: dict[str, GGMLType] = {
    "f32": GGMLType("f32", T.F32, LlamaFileType.ALL_F32),
    "f16": GGMLType("f16", T.F16, LlamaFileType.MOSTLY_F16),
    "bf16": GGMLType("bf16", T.BF16, LlamaFileType.MOSTLY_BF16),
    "q8_0": GGMLType("q8_0", T.Q8_0, LlamaFileType.MOSTLY_Q8_0, 8, "signed"),
    "q4_0": GGMLType("q4_0", T.Q4_0, LlamaFileType.MOSTLY_Q4_0, 4, "signed"),
    "q4_1": GGMLType("q4_1", T.Q4_1, LlamaFileType.MOSTLY_Q4_1, 4, "min"),
}
EXPORT_TYPES = ("f16", "bf16", "q8_0", "q4_0", "q4_1")


def ggml_type(name: str) -> GGMLType:
    t = GGML_TYPES.get(name.lower())
    if t is None or (name.lower() not in EXPORT_TYPES and name.lower() != "f32"):
        raise UserError(f"unsupported GGUF type {name!r}: use one of {', '.join(EXPORT_TYPES)}")
    return t


def _fp16_bytes(x: torch.Tensor) -> np.ndarray:
    """[rows, blocks] float32 (already fp16-representable) -> [rows, blocks, 2] uint8."""
    h = x.to(torch.float16).contiguous()
    if not torch.equal(h.float(), x.float()):
        raise ValueError("block scales must be fp16-representable: solve on the GGML grid")
    return h.numpy().view(np.uint8).reshape(*x.shape, 2)


def _nibbles(q: np.ndarray) -> np.ndarray:
    """Codes [rows, blocks, 32] in 0..15 -> [rows, blocks, 16] bytes (low: j, high: j + 16)."""
    return (q[..., :16] | (q[..., 16:] << 4)).astype(np.uint8)


def is_blockwise(g_idx: torch.Tensor, in_features: int) -> bool:
    """Whether each group is 32 consecutive input columns, as GGML blocks are."""
    want = torch.arange(in_features, dtype=torch.int32) // BLOCK
    return in_features % BLOCK == 0 and torch.equal(g_idx.to(torch.int32), want)


def check_blockwise(res: QuantResult, in_features: int) -> None:
    if not is_blockwise(res.g_idx, in_features):
        raise ValueError("the solution's groups are not consecutive blocks of 32 columns")


def pack_result(res: QuantResult, t: GGMLType) -> np.ndarray:
    """A solution on ``t``'s grid -> the tensor's bytes, uint8 [out, in / 32 · type_size]."""
    out_f, in_f = res.q.shape
    check_blockwise(res, in_f)
    nb = in_f // BLOCK
    q = res.q.to(torch.int64).numpy().reshape(out_f, nb, BLOCK)
    d = _fp16_bytes(res.scales.T)  # [out, blocks, 2]
    half = 1 << (t.bits - 1) if t.bits else 0
    if t.ggml in (T.Q4_0, T.Q8_0):
        if res.mins is not None or not torch.all(res.zeros == half):
            raise ValueError(f"{t.name} needs a signed grid (zero point {half})")
        body = _nibbles(q) if t.ggml == T.Q4_0 else (q - half).astype(np.int8).view(np.uint8)
        parts = [d, body]
    elif t.ggml == T.Q4_1:
        if res.mins is None:
            raise ValueError("q4_1 needs a min grid")
        parts = [d, _fp16_bytes(res.mins.T), _nibbles(q)]
    else:
        raise ValueError(f"{t.name} is not a block-quantized type")
    blocks = np.concatenate(parts, axis=-1)
    assert blocks.shape[-1] == gq.GGML_QUANT_SIZES[t.ggml][1]
    return np.ascontiguousarray(blocks.reshape(out_f, -1))


def float_tensor(w: torch.Tensor, t: GGMLType) -> np.ndarray:
    """A weight in a float type: F32/F16 as numpy arrays, BF16 as raw bytes (round to nearest even)."""
    a = w.detach().float().cpu().numpy()
    if t.ggml == T.F32:
        return a
    if t.ggml == T.F16:
        return a.astype(np.float16)
    if t.ggml == T.BF16:
        return gq.quantize(a, T.BF16)
    raise ValueError(f"{t.name} is not a float type")


def dequantize(data: np.ndarray, t: GGMLType) -> np.ndarray:
    """The reader's dequantization (gguf-py, which mirrors ggml): float32 [out, in]."""
    return gq.dequantize(data, t.ggml)
