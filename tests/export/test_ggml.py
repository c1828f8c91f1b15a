"""GGML block packing: our bytes, read back by gguf-py's dequantizer, are the solution bit for bit."""

import numpy as np
import pytest
import torch

from llmshrink.errors import UserError
from llmshrink.export.config import GGUFConfig
from llmshrink.export.ggml import EXPORT_TYPES, GGML_TYPES, GGMLType, ggml_type
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
    data = t.pack(res)
    assert data.dtype == np.uint8 and data.shape == (24, 96 // 32 * {"q4_0": 18, "q4_1": 20, "q8_0": 34}[type_name])
    np.testing.assert_array_equal(t.dequantize(data), res.dequantize().numpy())


def test_q4_0_nibble_order_and_scale_bytes():
    """Weight j of a block in the low nibble of byte j (j < 16), else the high nibble of byte j - 16."""
    W = torch.zeros(1, 32)
    W[0, 0], W[0, 16], W[0, 1] = -8.0, 7.0, 1.0  # d = -8 / -8 = 1
    res = rtn_quantize(W, GGUFConfig(type="q4_0", mse=False).quant_config())
    data = ggml_type("q4_0").pack(res)[0]
    assert data[:2].view(np.float16)[0] == 1.0
    assert data[2] == (0 | (15 << 4))  # q = x/d + 8: weight 0 -> 0, weight 16 -> 15
    assert data[3] == (9 | (8 << 4))


def test_a_solution_on_another_grid_is_refused():
    W, _ = _problem()
    qcfg = GGUFConfig(type="q4_1").quant_config()
    res = rtn_quantize(W, qcfg)
    with pytest.raises(ValueError, match="signed grid"):
        ggml_type("q4_0").pack(res)


@pytest.mark.parametrize("type_name", ["f16", "bf16", "f32"])
def test_float_types_round_trip_through_the_reader(type_name):
    W, _ = _problem()
    t = ggml_type(type_name, internal=True)
    data = t.encode(W)
    back = t.dequantize(data)
    expected = {"f16": W.half().float(), "bf16": W.bfloat16().float(), "f32": W}[type_name]
    np.testing.assert_array_equal(back.reshape(W.shape), expected.numpy())


def test_unknown_type_is_a_user_error():
    with pytest.raises(UserError, match="unsupported GGUF type 'q3_k'"):
        GGUFConfig(type="q3_k")
    with pytest.raises(UserError, match="unsupported GGUF type 'f32'"):  # internal (norms), not a --type
        ggml_type("f32")


def test_a_new_type_is_one_class_in_the_registry(monkeypatch):
    from gguf import GGMLQuantizationType as T
    from gguf import LlamaFileType

    from llmshrink.export import ggml

    monkeypatch.setattr(ggml, "GGML_TYPES", dict(GGML_TYPES))

    class Q8Copy(ggml.Q8_0):
        name = "q8_copy"

    assert ggml.GGML_TYPES["q8_copy"].ggml == T.Q8_0 and "q8_copy" not in GGML_TYPES
    assert EXPORT_TYPES == ("f16", "bf16", "q8_0", "q4_0", "q4_1")
    assert all(isinstance(t, GGMLType) and t.file_type in LlamaFileType for t in GGML_TYPES.values())


def test_rtn_rounding_of_a_block_type_honours_the_solve_settings():
    """A plain weight written as a block type without a solution is rounded on the type's grid,
    with the job's MSE setting when the job solves on that grid."""
    W, _ = _problem()
    t = ggml_type("q4_0")
    default, plain = t.encode(W), t.encode(W, GGUFConfig(type="q4_0", mse=False).quant_config())
    assert not np.array_equal(default, plain)
    np.testing.assert_array_equal(plain, t.pack(rtn_quantize(W, GGUFConfig(type="q4_0", mse=False).quant_config())))
    np.testing.assert_array_equal(t.encode(W, GGUFConfig(type="q4_1").quant_config()), default)  # another grid
