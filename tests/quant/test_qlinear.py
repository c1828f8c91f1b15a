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


@pytest.mark.parametrize(("bits", "act_order", "sym"), [(4, True, False), (3, False, True)])
def test_trainable_scales_learn_and_are_written_back_in_the_gptq_layout(bits, act_order, sym):
    """Within scales_trainable the layer computes (q - zero) * scales * scale_gain with a float32
    gain parameter from 1 (the same output as before at the start); gradients reach the gains
    only, and leaving writes the learnt scales (fp16) back, codes and zeros untouched."""
    m = _layer(bits, 32, act_order, sym)
    m.kernel = "dequant"
    x = torch.randn(5, 96, generator=torch.Generator().manual_seed(3))
    y0 = m(x)
    packed = {k: getattr(m, k).clone() for k in ("qweight", "qzeros", "g_idx")}
    with m.scales_trainable() as scale:
        assert scale.dtype == torch.float32 and scale.shape == m.scales.shape and scale.requires_grad
        assert dict(m.named_parameters())["scale_gain"] is scale and torch.equal(scale, torch.ones_like(scale))
        torch.testing.assert_close(m(x), y0, rtol=1e-5, atol=1e-5)
        target = (y0 * 1.1 - m.bias * 0.1).detach()  # reachable exactly: every scale times 1.1
        opt = torch.optim.Adam([scale], lr=1e-2)
        first = None
        for _ in range(50):
            loss = (m(x) - target).pow(2).mean()
            first = first if first is not None else loss.item()
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < first / 10
        learnt, y_in, s0 = scale.detach().clone(), m(x).detach(), m.scales.float()
    assert "scale_gain" not in dict(m.named_parameters()) and m._base is None
    assert m.scales.dtype == torch.float16 and torch.equal(m.scales, (s0 * learnt).half())
    assert all(torch.equal(getattr(m, k), v) for k, v in packed.items())
    assert (m(x) - y_in).abs().max() < 1e-3 * y_in.abs().max()  # the fp16 rounding of the scales only
    assert (m(x) - target).norm() < (y0 - target).norm() / 3
