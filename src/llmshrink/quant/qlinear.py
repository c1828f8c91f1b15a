"""A linear layer that keeps its weight packed in the HF GPTQ layout and computes from it.

CPU path: unpack and dequantize the weight, then one matmul. The dequantized weight can be
cached (``cache=True``) to trade the memory saving for speed; by default it is rebuilt on every
call, so memory holds only the packed form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .gptq import QuantResult
from .pack import pack_qweight, pack_qzeros, unpack_qweight, unpack_qzeros


class QuantLinear(torch.nn.Module):
    def __init__(self, in_features: int, out_features: int, bits: int, n_groups: int, *, bias: bool = False,
                 dtype: torch.dtype = torch.float16) -> None:
        super().__init__()
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        self.register_buffer("qweight", torch.zeros(in_features * bits // 32, out_features, dtype=torch.int32))
        self.register_buffer("qzeros", torch.zeros(n_groups, out_features * bits // 32, dtype=torch.int32))
        self.register_buffer("scales", torch.zeros(n_groups, out_features, dtype=dtype))
        self.register_buffer("g_idx", torch.zeros(in_features, dtype=torch.int32))
        self.bias = torch.nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self.cache = False
        self._w: torch.Tensor | None = None

    @classmethod
    def from_result(cls, linear: torch.nn.Linear, res: QuantResult, bits: int) -> QuantLinear:
        out_f, in_f = linear.weight.shape
        m = cls(in_f, out_f, bits, res.scales.shape[0], bias=linear.bias is not None)
        m.qweight.copy_(pack_qweight(res.q, bits))
        m.qzeros.copy_(pack_qzeros(res.zeros, bits))
        m.scales.copy_(res.scales.to(torch.float16))
        m.g_idx.copy_(res.g_idx)
        if linear.bias is not None:
            m.bias.data.copy_(linear.bias.data)
        return m.to(linear.weight.device)

    def dequantized_weight(self) -> torch.Tensor:
        """[out, in] float32: scale · (q − zero), per input column's group."""
        q = unpack_qweight(self.qweight, self.bits).float()
        zeros = unpack_qzeros(self.qzeros, self.bits).float()
        g = self.g_idx.long()
        scales = self.scales.float()
        return scales.T[:, g] * (q - zeros.T[:, g])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self._w
        if w is None:
            w = self.dequantized_weight().to(x.dtype)
            if self.cache:
                self._w = w
        return F.linear(x, w, self.bias.to(x.dtype) if self.bias is not None else None)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}"
