"""A linear layer that keeps its weight packed in the HF GPTQ layout and computes from it.

Kernels (``QuantLinear.kernel``):

- ``dequant``: unpack and dequantize the weight, then one matmul. By default the weight is rebuilt
  on every call, so memory holds only the packed form; within ``with layer.dequantized():`` (or
  :func:`dequantized` for a whole model) it is built once and kept, trading the memory saving for
  speed (evaluation, frozen blocks), and freed on leaving.
- ``int4``: PyTorch's int4 CPU kernel (``_weight_int4pack_mm_for_cpu``), for 4-bit layers whose
  groups it can express: input columns are sorted by group (act-order's ``g_idx``) and a ragged
  last group is split into kernel groups of gcd(group sizes). The kernel's grid is
  ``(q - 8)·s + m``, so a GPTQ zero point z becomes ``m = (8 - z)·s``: exact, no re-rounding.
  It runs in ``int4_dtype`` (default bfloat16): with bf16 activations and scales the kernel takes
  its vectorised path, ~50x faster on this CPU (AVX-512, no AMX) than with float32 activations,
  which go through a slow generic loop. The price is bf16 rounding of the activations and scales
  (relative 2^-9), far below the 4-bit grid's own error; ``int4_dtype = torch.float32`` gives
  the exact result at the slow speed.
- ``auto`` (default): ``int4`` for up to ``int4_max_rows`` (256) rows at a time (generation,
  prompts), where it beats dequantizing the whole weight, and ``dequant`` for longer inputs,
  where one float matmul over the dequantized weight wins on this CPU; ``dequant`` too once the
  dequantized weight is cached (evaluation). See BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from .gptq import QuantResult
from .pack import pack_qweight, pack_qzeros, unpack_qweight, unpack_qzeros


class QuantLinear(torch.nn.Module):
    PACKED = ("qweight", "qzeros", "scales", "g_idx")  # the GPTQ tensors (buffers; a bias is a parameter)

    def __init__(self, in_features: int, out_features: int, bits: int, n_groups: int, *, bias: bool = False,
                 dtype: torch.dtype = torch.float16) -> None:
        super().__init__()
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        self.register_buffer("qweight", torch.zeros(in_features * bits // 32, out_features, dtype=torch.int32))
        self.register_buffer("qzeros", torch.zeros(n_groups, out_features * bits // 32, dtype=torch.int32))
        self.register_buffer("scales", torch.zeros(n_groups, out_features, dtype=dtype))
        self.register_buffer("g_idx", torch.zeros(in_features, dtype=torch.int32))
        self.bias = torch.nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self._cache = False  # inside dequantized(): keep the dequantized weight
        self.kernel = "auto"  # auto | dequant | int4
        self.int4_max_rows = 256  # bf16 int4 kernel beats dequantize+matmul below ~512 rows here
        self.int4_dtype = torch.bfloat16
        self._w: torch.Tensor | None = None
        self._int4: tuple | None = None  # (packed, kernel group, float32 scales+mins, column order)
        self._int4_sz: torch.Tensor | None = None  # the scales+mins in int4_dtype
        self._int4_ok: bool | None = None
        self._base: torch.Tensor | None = None  # (q - zero) per weight while the scales train

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

    @contextlib.contextmanager
    def dequantized(self) -> Iterator[QuantLinear]:
        """Within the block, forward multiplies by the dequantized weight, built once (exact: the
        same values every call); on leaving, the previous mode is back and the weight is freed."""
        old = self._cache
        self._cache = True
        try:
            yield self
        finally:
            self._cache = old
            if not old:
                self._w = None

    @contextlib.contextmanager
    def scales_trainable(self) -> Iterator[torch.nn.Parameter]:
        """Within the block, the GPTQ scales learn by backpropagation while codes and zeros stay
        fixed (EfficientQAT's end-to-end step-size training): forward multiplies by
        ``(q - zero) · scales · scale_gain``, ``scale_gain`` a float32 parameter of the scales'
        shape starting at 1, so one learning rate moves every scale by the same relative amount,
        whatever the model's weight magnitudes. On leaving, ``scales · scale_gain`` is written
        back to ``scales`` in its dtype: the layer is as plain GPTQ as before."""
        self._base = self._offsets()
        self._scales0 = self.scales.float()
        self.scale_gain = torch.nn.Parameter(torch.ones_like(self._scales0))
        self._w, self._int4, self._int4_sz = None, None, None
        try:
            yield self.scale_gain
        finally:
            with torch.no_grad():
                self.scales.copy_((self._scales0 * self.scale_gain).to(self.scales.dtype))
            del self.scale_gain
            self._base, self._scales0, self._w, self._int4, self._int4_sz = None, None, None, None, None

    def _offsets(self) -> torch.Tensor:
        """[out, in] float32: q − zero, per input column's group."""
        q = unpack_qweight(self.qweight, self.bits).float()
        zeros = unpack_qzeros(self.qzeros, self.bits).float()
        return q - zeros.T[:, self.g_idx.long()]

    def dequantized_weight(self) -> torch.Tensor:
        """[out, in] float32: scale · (q − zero), per input column's group."""
        return self.scales.float().T[:, self.g_idx.long()] * self._offsets()

    def int4_supported(self) -> bool:
        if self._int4_ok is None:
            self._int4_ok = (self.bits == 4 and self.qweight.device.type == "cpu"
                             and hasattr(torch, "_weight_int4pack_mm_for_cpu") and self._int4_group() is not None)
        return self._int4_ok

    def _int4_group(self) -> int | None:
        sizes = torch.bincount(self.g_idx.long())
        kg = math.gcd(*[int(n) for n in sizes[sizes > 0]], self.in_features)
        for size in (256, 128, 64, 32):
            if kg % size == 0:
                return size
        return None

    def _int4_operands(self) -> tuple:
        if self._int4 is None:
            kg = self._int4_group()
            order = torch.argsort(self.g_idx.long(), stable=True)
            q = unpack_qweight(self.qweight, 4)[:, order].contiguous()  # [out, in], groups contiguous
            groups = self.g_idx.long()[order][::kg]  # the GPTQ group of each kernel group
            s = self.scales.float()[groups]  # [in / kg, out]
            z = unpack_qzeros(self.qzeros, 4).float()[groups]
            sz = torch.stack([s, (8 - z) * s], dim=-1).contiguous()
            identity = torch.equal(order, torch.arange(self.in_features))
            self._int4 = (torch._convert_weight_to_int4pack_for_cpu(q, 1), kg, sz, None if identity else order)
        packed, kg, sz, order = self._int4
        if self._int4_sz is None or self._int4_sz.dtype != self.int4_dtype:
            self._int4_sz = sz.to(self.int4_dtype)  # cast from the float32 master: switching back stays exact
        return packed, kg, self._int4_sz, order

    def _forward_int4(self, x: torch.Tensor) -> torch.Tensor:
        if not self.int4_supported():
            raise ValueError(f"the int4 CPU kernel cannot run this layer ({self.extra_repr()}); use kernel='dequant'")
        packed, kg, sz, order = self._int4_operands()
        x2 = x.reshape(-1, self.in_features)
        if order is not None:
            x2 = x2[:, order]
        y = torch._weight_int4pack_mm_for_cpu(x2.to(sz.dtype).contiguous(), packed, kg, sz).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._base is not None:  # the scales are training
            # index_select, not indexing: its backward (index_add_) is several times faster on CPU
            s = torch.index_select(self._scales0 * self.scale_gain, 0, self.g_idx.long())  # [in, out]
            w = (self._base * s.T).to(x.dtype)
            return F.linear(x, w, self.bias.to(x.dtype) if self.bias is not None else None)
        rows = x.numel() // self.in_features
        if self.kernel == "int4" or (self.kernel == "auto" and self._w is None and rows <= self.int4_max_rows
                                     and x.dtype in (torch.float32, torch.bfloat16) and self.int4_supported()):
            return self._forward_int4(x)
        w = self._w
        if w is None:
            w = self.dequantized_weight().to(x.dtype)
            if self._cache:
                self._w = w
        return F.linear(x, w, self.bias.to(x.dtype) if self.bias is not None else None)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}"


@contextlib.contextmanager
def dequantized(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """:meth:`QuantLinear.dequantized` for every packed layer of ``model`` at once."""
    with contextlib.ExitStack() as stack:
        for m in model.modules():
            if isinstance(m, QuantLinear):
                stack.enter_context(m.dequantized())
        yield model
