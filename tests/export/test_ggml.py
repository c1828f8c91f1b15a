"""GGML block packing: our bytes, read back by gguf-py's dequantizer, are the solution bit for bit."""

import numpy as np
import pytest
import torch

from llmshrink.config import GGUFConfig
from llmshrink.errors import UserError
from llmshrink.export.ggml import dequantize, float_tensor, ggml_type, pack_result
from llmshrink.quant.gptq import accumulate_hessian, gptq_quantize, rtn_quantize


def _problem(out_f=24, in_f=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=g) * 0.05
    X = torch.randn(256, in_f, generator=g) @ (torch.eye(in_f) + 0.3 * torch.randn(in_f, in_f, generator=g))
    H, _ = accumulate_hessian(None, 0, X)
    return W, H


@pytest.mark.parametrize("type_name", ["q4_0", "q4_1", "q8_0"])
@pytest.mark.parametrize("method", ["gptq", "rtn"])
def test_packed_blocks_dequantize_to_the_solution_exactly(type_name, method):
    W, H = _problem()
    qcfg = GGUFConfig(type=type_name, method=method).quant_config()
    res = gptq_quantize(W, H, qcfg) if method == "gptq" else rtn_quantize(W, qcfg)
    t = ggml_type(type_name)
    data = pack_result(res, t)
    assert data.dtype == np.uint8 and data.shape == (24, 96 // 32 * {"q4_0": 18, "q4_1": 20, "q8_0": 34}[type_name])
    np.testing.assert_array_equal(dequantize(data, t), res.dequantize().numpy())


def test_q4_0_nibble_order_and_scale_bytes():
    """Weight j of a block in the low nibble of byte j (j < 16), else the high nibble of byte j - 16."""
    W = torch.zeros(1, 32)
    W[0, 0], W[0, 16], W[0, 1] = -8.0, 7.0, 1.0  # d = -8 / -8 = 1
    res = rtn_quantize(W, GGUFConfig(type="q4_0", mse=False).quant_config())
    data = pack_result(res, ggml_type("q4_0"))[0]
    assert data[:2].view(np.float16)[0] == 1.0
    assert data[2] == (0 | (15 << 4))  # q = x/d + 8: weight 0 -> 0, weight 16 -> 15
    assert data[3] == (9 | (8 << 4))


def test_a_solution_on_another_grid_is_refused():
    W, _ = _problem()
    qcfg = GGUFConfig(type="q4_1").quant_config()
    res = rtn_quantize(W, qcfg)
    with pytest.raises(ValueError, match="signed grid"):
        pack_result(res, ggml_type("q4_0"))


@pytest.mark.parametrize("type_name", ["f16", "bf16", "f32"])
def test_float_types_round_trip_through_the_reader(type_name):
    W, _ = _problem()
    t = ggml_type(type_name)
    data = float_tensor(W, t)
    back = dequantize(data, t)
    expected = {"f16": W.half().float(), "bf16": W.bfloat16().float(), "f32": W}[type_name]
    np.testing.assert_array_equal(back.reshape(W.shape), expected.numpy())


def test_unknown_type_is_a_user_error():
    with pytest.raises(UserError, match="unsupported GGUF type 'q3_k'"):
        GGUFConfig(type="q3_k")
