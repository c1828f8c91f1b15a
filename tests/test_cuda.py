"""CUDA smoke test: the GPTQ solve, packing, the packed layer's forward and GGML block packing
run on a GPU and give what the CPU gives. Skips without a GPU."""

import numpy as np
import pytest
import torch

from llmshrink.exporters.ggml import ggml_type
from llmshrink.quant.config import QuantConfig
from llmshrink.quant.gptq import accumulate_hessian, gptq_quantize
from llmshrink.quant.pack import pack_qweight, pack_qzeros, unpack_qweight
from llmshrink.quant.qlinear import QuantLinear

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _problem(device):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(1024, 256, generator=g)
    W = torch.randn(64, 256, generator=g) * 0.05
    return W.to(device), accumulate_hessian(None, 0, X.to(device))[0]


@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_and_packing_on_cuda_match_the_cpu(bits):
    cfg = QuantConfig(bits=bits, group_size=64, act_order=True)
    gpu = gptq_quantize(*_problem("cuda"), cfg)
    cpu = gptq_quantize(*_problem("cpu"), cfg)
    assert gpu.q.device.type == "cuda" and gpu.g_idx.device.type == "cuda"
    # different kernels round differently: nearly all codes agree, and the solutions are as good
    assert (gpu.q.cpu() == cpu.q).float().mean() > 0.98
    assert gpu.loss == pytest.approx(cpu.loss, rel=0.05)
    qw = pack_qweight(gpu.q, bits)
    assert qw.device.type == "cuda"
    assert torch.equal(unpack_qweight(qw, bits).cpu(), gpu.q.cpu().to(torch.int32))
    assert torch.equal(pack_qzeros(gpu.zeros, bits).cpu(), pack_qzeros(gpu.zeros.cpu(), bits))


def test_quantlinear_forward_on_cuda():
    W, H = _problem("cuda")
    res = gptq_quantize(W, H, QuantConfig(bits=4, group_size=64))
    lin = torch.nn.Linear(256, 64, bias=False).to("cuda")
    m = QuantLinear.from_result(lin, res, 4)
    assert m.qweight.device.type == "cuda"
    x = torch.randn(5, 256, device="cuda")
    ref = x @ res.dequantize().T
    torch.testing.assert_close(m(x), ref, rtol=3e-2, atol=3e-2)  # a kernel may compute in bfloat16
    m.kernel = "dequant"
    torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-4)


def test_ggml_pack_of_a_cuda_solution():
    W, H = _problem("cuda")
    t = ggml_type("q4_0")
    res = gptq_quantize(W, H, t.quant_config("gptq", act_order=True))
    data = t.pack(res)
    assert isinstance(data, np.ndarray)
    np.testing.assert_array_equal(t.dequantize(data), res.dequantize().cpu().numpy())
