"""Grid kinds: exact fp16 parameters, llama.cpp's Q4_0 scale choice, min grids."""

import pytest
import torch

from llmshrink.errors import UserError
from llmshrink.quant.config import QuantConfig
from llmshrink.quant.gptq import accumulate_hessian, gptq_quantize, rtn_quantize
from llmshrink.quant.grid import fit_grid


def _w(rows=16, cols=64, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def test_signed_grid_puts_the_largest_magnitude_weight_on_code_zero():
    w = _w()
    g = fit_grid(w, 15, sym=True, kind="signed")
    idx = w.abs().argmax(dim=1)
    extreme = w[torch.arange(w.shape[0]), idx]
    assert torch.equal(g.scale, (-extreme / 8).half().float())  # llama.cpp: d = max / -8
    assert torch.all(g.quantize(w, 15)[torch.arange(w.shape[0]), idx] == 0)
    assert torch.equal(g.zero, torch.full_like(g.zero, 8))


def test_signed_grid_matches_llama_cpp_reference_q4_0_rounding():
    """Without the MSE search, RTN on the signed grid is gguf-py's (= ggml's) Q4_0 quantizer."""
    import gguf
    import numpy as np

    w = _w(8, 64)
    res = rtn_quantize(w, QuantConfig(method="rtn", bits=4, group_size=32, sym=True, grid="signed",
                                      act_order=False, mse=False))
    ref = gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q4_0),
                                 gguf.GGMLQuantizationType.Q4_0)
    # ggml rounds x/d + 8.5 down, we round half to even: ties (measure zero here) aside, equal.
    np.testing.assert_array_equal(res.dequantize().numpy(), ref)


def test_min_grid_reproduces_weights_already_on_a_q4_1_grid():
    d = (torch.rand(8, 1) * 0.1 + 0.01).half().float()
    m = (-torch.rand(8, 1) * 0.5).half().float()
    q = torch.randint(0, 16, (8, 32)).float()
    q[:, 0], q[:, 1] = 0, 15  # the group's range is the grid's
    w = d * q + m
    g = fit_grid(w, 15, sym=False, kind="min")
    assert torch.equal(g.dequantize(g.quantize(w, 15)), w)


@pytest.mark.parametrize("kind,sym", [("zero", True), ("zero", False), ("signed", True), ("min", False)])
def test_mse_search_never_worse_than_the_full_range(kind, sym):
    w = _w(32, 32, seed=1)
    full = fit_grid(w, 15, sym=sym, kind=kind)
    best = fit_grid(w, 15, sym=sym, kind=kind, mse=True)
    err = lambda g: (g.dequantize(g.quantize(w, 15)) - w).abs().pow(2.4).sum(dim=1)  # noqa: E731
    assert torch.all(err(best) <= err(full))
    assert torch.equal(best.scale, best.scale.half().float())
    if kind == "min":
        assert torch.equal(best.offset, best.offset.half().float())


@pytest.mark.parametrize("kind,sym", [("signed", True), ("min", False)])
def test_gptq_on_ggml_grids_dequantizes_to_its_codes_and_beats_rtn(kind, sym):
    W = _w(32, 128, seed=2)
    X = torch.randn(512, 128, generator=torch.Generator().manual_seed(3)) @ torch.randn(128, 128) * 0.3
    H, _ = accumulate_hessian(None, 0, X)
    cfg = QuantConfig(bits=4, group_size=32, sym=sym, grid=kind, act_order=True, static_groups=True)
    res = gptq_quantize(W, H, cfg)
    assert torch.equal(res.g_idx, torch.arange(128, dtype=torch.int32) // 32)  # blocks of consecutive columns
    assert (res.mins is not None) == (kind == "min")
    rtn = rtn_quantize(W, cfg, H)
    assert res.loss < rtn.loss


def test_grid_config_validation():
    with pytest.raises(UserError, match="unknown grid"):
        QuantConfig(grid="nf4")
    with pytest.raises(UserError, match="^sym: must be False on a min grid"):
        QuantConfig(grid="min", sym=True)
    with pytest.raises(UserError, match="static_groups"):
        QuantConfig(grid="signed", act_order=True, static_groups=False)


def test_table_grid_rounds_to_the_nearest_level():
    from llmshrink.quant.grid import GRID_KINDS

    w = torch.tensor([[-1.27, 0.0, 0.13, 0.125, 1.13, 0.69]])
    g = fit_grid(w, 15, sym=True, kind="nl4")
    assert torch.equal(g.scale, torch.tensor([0.01]).half().float())  # the extreme on level -127
    levels = torch.tensor(GRID_KINDS["nl4"].levels, dtype=torch.float32)
    q = g.quantize(w, 15)
    back = g.dequantize(q)
    nearest = (w / g.scale[:, None]).unsqueeze(-1).sub(levels).abs().min(-1).values
    assert torch.allclose((back - w).abs() / g.scale[:, None], nearest, atol=1e-3)
    assert q[0, 0] == 0 and q[0, 4] == 15 and q[0, 1] == 8  # -127 and 113 are levels 0 and 15; 0 -> 1


@pytest.mark.parametrize("kind", ["k_min4", "k_min6", "k_signed6", "k_signed8"])
def test_superblock_unit_search_never_loses_to_the_plain_unit(kind, monkeypatch):
    from llmshrink.quant import grid as grid_mod
    from llmshrink.quant.grid import GRID_KINDS, _weighted_error, fit_superblock

    g = torch.Generator().manual_seed(3)
    w = torch.randn(32, 256, generator=g) * torch.linspace(0.2, 2, 256)
    cw = torch.rand(256, generator=g) + 0.1
    gk = GRID_KINDS[kind]
    group = 32 if gk.scale_bits == 6 and not gk.signed_scales else 16
    maxq = {"k_min4": 3, "k_min6": 15, "k_signed6": 7, "k_signed8": 63}[kind]
    searched = fit_superblock(w, maxq, kind, group, mse=True, col_weight=cw)
    monkeypatch.setattr(grid_mod, "_UNIT_FACTORS", (1.0,))  # the unit that maps the extreme on the range's end
    plain = fit_superblock(w, maxq, kind, group, mse=True, col_weight=cw)
    assert len(searched) == 256 // group
    better, base = _weighted_error(searched, w, maxq, group, cw), _weighted_error(plain, w, maxq, group, cw)
    assert torch.all(better <= base) and better.sum() < base.sum()
    for gr in searched:  # every group's scale is an integer of the scale bits times the row's fp16 d
        n = gr.scale / gr.d
        assert torch.equal(n, n.round()) and torch.equal(gr.d, searched[0].d)
