"""GGML block packing: our bytes, read back by gguf-py's dequantizer, are the solution bit for bit."""

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES

from llmshrink.errors import UserError
from llmshrink.exporters.config import GGUFConfig
from llmshrink.exporters.ggml import EXPORT_TYPES, GGML_TYPES, QK_K, GGMLType, ggml_type
from llmshrink.quant.gptq import accumulate_hessian, gptq_quantize, rtn_quantize


def _problem(out_f=24, in_f=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=g) * 0.05
    X = torch.randn(256, in_f, generator=g) @ (torch.eye(in_f) + 0.3 * torch.randn(in_f, in_f, generator=g))
    H, _ = accumulate_hessian(None, 0, X)
    return W, H


BLOCK_TYPES = [n for n, t in GGML_TYPES.items() if t.quantized]


@pytest.mark.parametrize("type_name", BLOCK_TYPES)
@pytest.mark.parametrize("method", ["gptq", "rtn"])
@pytest.mark.parametrize("act_order", [False, True])
def test_packed_blocks_dequantize_to_the_solution_exactly(type_name, method, act_order):
    t = ggml_type(type_name, internal=True)
    W, H = _problem(in_f=3 * t.block)
    qcfg = GGUFConfig(method=method, act_order=act_order).quant_config(type_name)
    res = gptq_quantize(W, H, qcfg) if method == "gptq" else rtn_quantize(W, qcfg)
    data = t.pack(res)
    block, size = GGML_QUANT_SIZES[t.ggml]
    assert block == t.block and data.dtype == np.uint8 and data.shape == (24, 3 * size)
    np.testing.assert_array_equal(t.dequantize(data), res.dequantize().numpy())


@pytest.mark.parametrize("type_name", BLOCK_TYPES)
def test_gptq_on_each_grid_beats_rounding_to_nearest(type_name):
    t = ggml_type(type_name, internal=True)
    W, H = _problem(in_f=2 * t.block, seed=1)
    qcfg = GGUFConfig(method="gptq").quant_config(type_name)
    assert gptq_quantize(W, H, qcfg).loss < 0.95 * rtn_quantize(W, qcfg, H).loss


@pytest.mark.parametrize("type_name", ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_xs"])
def test_k_grids_share_one_fp16_unit_per_super_block(type_name):
    """Each group's scale is an integer of the type's scale bits times its super-block's fp16 d."""
    t = ggml_type(type_name, internal=True)
    W, H = _problem(in_f=2 * QK_K, seed=2)
    res = gptq_quantize(W, H, GGUFConfig().quant_config(type_name))
    per = QK_K // t.group
    d = res.d.T  # [out, groups]
    assert torch.equal(d, d[:, ::per].repeat_interleave(per, dim=1))
    assert torch.equal(d.half().float(), d)
    n = res.scales.T / d
    assert torch.equal(n, n.round()) and n.abs().max() <= (1 << t.scale_bits) and n.abs().min() >= 1
    if res.mins is not None:
        m = -res.mins.T / res.dmin.T
        assert torch.equal(m, m.round()) and m.min() >= 0 and m.max() <= (1 << t.scale_bits) - 1


def test_k_types_refuse_widths_that_are_not_whole_super_blocks():
    W, _ = _problem(in_f=96)
    with pytest.raises(UserError, match="cannot be stored as q4_k"):
        ggml_type("q4_k", internal=True).encode(W)
    q4_k = ggml_type("q4_k", internal=True)
    assert q4_k.fits(512) and not q4_k.fits(576) and ggml_type("q5_0").fits(576)


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
    with pytest.raises(UserError, match="unsupported GGUF type 'q7_k'"):
        GGUFConfig(type="q7_k")
    with pytest.raises(UserError, match="unsupported GGUF type 'f32'"):  # internal (norms), not a --type
        ggml_type("f32")


def test_a_new_type_is_one_class_in_the_registry(monkeypatch):
    from gguf import GGMLQuantizationType as T
    from gguf import LlamaFileType

    from llmshrink.exporters import ggml_base, ggml_legacy

    monkeypatch.setattr(ggml_base, "GGML_TYPES", dict(GGML_TYPES))

    class Q8Copy(ggml_legacy.Q8_0):
        name = "q8_copy"

    assert ggml_base.GGML_TYPES["q8_copy"].ggml == T.Q8_0 and "q8_copy" not in GGML_TYPES
    assert EXPORT_TYPES == ("f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")  # K types: through mixes
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
