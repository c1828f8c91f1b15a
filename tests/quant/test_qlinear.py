import pytest
import torch

from llmshrink.quant.config import QuantConfig
from llmshrink.quant.gptq import accumulate_hessian, gptq_quantize
from llmshrink.quant.qlinear import QuantLinear


def _layer(bits, group_size, act_order, sym, in_f=96, out_f=64):
    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(in_f, out_f, bias=True)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_f, in_f, generator=g))
        linear.bias.copy_(torch.randn(out_f, generator=g))
    x = torch.randn(256, in_f, generator=g) * torch.linspace(0.1, 3, in_f)
    H, _ = accumulate_hessian(None, 0, x)
    res = gptq_quantize(linear.weight.data, H, QuantConfig(bits=bits, group_size=group_size, act_order=act_order,
                                                           sym=sym))
    return QuantLinear.from_result(linear, res, bits)


@pytest.mark.parametrize(("group_size", "act_order", "sym"), [(32, False, True), (64, True, False), (-1, True, True)])
def test_int4_kernel_matches_dequantize_then_matmul(group_size, act_order, sym):
    """Ragged groups (96 = 64 + 32), act-order's scattered g_idx and asymmetric zeros included."""
    m = _layer(4, group_size, act_order, sym)
    assert m.int4_supported()
    x = torch.randn(3, 2, 96, generator=torch.Generator().manual_seed(1))
    m.kernel = "dequant"
    expected = m(x)
    m.kernel, m.int4_dtype = "int4", torch.float32  # the kernel's exact (slow) path
    torch.testing.assert_close(m(x), expected, rtol=1e-4, atol=1e-3)
    m.int4_dtype = torch.bfloat16  # the fast path: bf16 activations and scales, fp32 result
    fast = m(x)
    assert fast.dtype == torch.float32
    err = (fast - expected).abs().max() / expected.abs().max()
    assert 0 < err < 2e-2  # bf16 rounding (2^-9 relative per operand), not a different answer
    m.int4_dtype = torch.float32  # back to the exact path: the scales were not rounded through bf16
    torch.testing.assert_close(m(x), expected, rtol=1e-4, atol=1e-3)
    m.int4_dtype = torch.bfloat16
    m.kernel = "auto"  # a few rows: the int4 kernel; many rows: dequantize
    torch.testing.assert_close(m(x[:1, :1]), fast[:1, :1], rtol=0, atol=1e-6)
    many = torch.randn(4, 80, 96, generator=torch.Generator().manual_seed(2))
    assert many.numel() // 96 > m.int4_max_rows
    m.kernel = "dequant"
    reference = m(many)
    m.kernel = "auto"
    torch.testing.assert_close(m(many), reference, rtol=0, atol=0)


def test_int4_kernel_declines_what_it_cannot_express():
    m = _layer(3, 32, False, True)
    assert not m.int4_supported()
    m.kernel = "auto"
    m(torch.randn(1, 96))  # falls back to dequantize
    m.kernel = "int4"
    with pytest.raises(ValueError, match="kernel='dequant'"):
        m(torch.randn(1, 96))
