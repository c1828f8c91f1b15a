import logging

import pytest
import torch

from llmshrink.errors import UserError
from llmshrink.quant.config import QuantConfig
from llmshrink.quant.gptq import accumulate_hessian, gptq_quantize, rtn_quantize, weighted_error
from llmshrink.quant.grid import fit_grid, group_bounds


def _problem(out=48, cols=80, n=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    X = torch.randn(n, cols, generator=g) @ mix  # correlated inputs, as in a real layer
    X[:, :4] *= 8  # a few outlier channels: act-order matters
    W = torch.randn(out, cols, generator=g) * 0.05
    H, _ = accumulate_hessian(None, 0, X)
    return W, H


def test_hessian_accumulation_matches_definition():
    X = torch.randn(300, 16, dtype=torch.float64)
    H, n = None, 0
    for chunk in X.split(70):
        H, n = accumulate_hessian(H, n, chunk)
    assert n == 300
    # each batch's product is formed in float32 (accumulate_hessian's docstring), summed in float64
    torch.testing.assert_close(H, 2 / 300 * X.T @ X, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [-1, 16, 24])  # 24 does not divide 80: the last group has 8 columns
@pytest.mark.parametrize(("sym", "act_order", "static"), [(True, True, False), (False, False, False),
                                                          (True, True, True), (False, True, True)])
def test_gptq_beats_rtn_and_codes_are_consistent(bits, group_size, sym, act_order, static):
    W, H = _problem()
    cfg = QuantConfig(bits=bits, group_size=group_size, sym=sym, act_order=act_order, static_groups=static,
                      block_size=32)
    res = gptq_quantize(W, H, cfg)
    rtn = rtn_quantize(W, cfg, H)
    assert res.loss < rtn.loss
    # The packed description (codes, scales, zeros, g_idx) reproduces the solution exactly.
    assert res.loss == pytest.approx(weighted_error(W, res.dequantize(), H), rel=1e-5)
    assert int(res.q.min()) >= 0 and int(res.q.max()) <= cfg.maxq
    n_groups = len(group_bounds(80, cfg.group_columns(80)))
    assert res.scales.shape == res.zeros.shape == (n_groups, 48)
    assert sorted(torch.bincount(res.g_idx.long()).tolist()) == sorted(b - a for a, b in group_bounds(80, cfg.group_columns(80)))
    if static or not act_order:
        assert torch.equal(res.g_idx.long(), torch.arange(80) // cfg.group_columns(80))
    if sym:
        assert (res.zeros == (cfg.maxq + 1) // 2).all()


def test_eight_bit_is_near_lossless():
    W, H = _problem()
    res = gptq_quantize(W, H, QuantConfig(bits=8, group_size=-1))
    # GPTQ minimises the output error, so measure that: relative to the output energy tr(W H Wᵀ).
    rel = res.loss / weighted_error(W, torch.zeros_like(W), H)
    print(f"8-bit relative output error {rel:.2e}")
    assert rel < 1e-4


def test_auto_damping_raises_itself(caplog):
    W, H = _problem(cols=32)
    evals, vecs = torch.linalg.eigh(H)
    evals[0] = -0.05 * float(torch.diag(H).mean())  # indefinite: 1% damping cannot fix it, 10% can
    bad = vecs @ torch.diag(evals) @ vecs.T
    with caplog.at_level(logging.WARNING, logger="llmshrink.quant.gptq"):
        res = gptq_quantize(W, bad, QuantConfig(bits=4, group_size=-1, damp=0.01))
    assert res.damp == pytest.approx(0.1) and "not positive-definite" in caplog.text
    with pytest.raises(UserError, match="stayed singular"):
        gptq_quantize(W, -torch.eye(32, dtype=torch.float64), QuantConfig(bits=4, group_size=-1))


def test_dead_columns_are_zeroed_without_nans():
    W, H = _problem(cols=32)
    H[5, :] = 0
    H[:, 5] = 0
    res = gptq_quantize(W, H, QuantConfig(bits=4, group_size=16))
    deq = res.dequantize()
    assert torch.isfinite(deq).all() and deq[:, 5].abs().max() < 1e-6 + res.scales.max()


def test_mse_search_never_worse_per_row():
    W = torch.randn(64, 128)
    W[:, 0] = 3.0  # an outlier stretches the plain min/max range
    for sym in (True, False):
        plain = fit_grid(W, 7, sym=sym)
        searched = fit_grid(W, 7, sym=sym, mse=True)
        err = lambda g: (g.dequantize(g.quantize(W, 7)) - W).abs().pow(2.4).sum(1)  # noqa: E731
        assert (err(searched) <= err(plain) + 1e-6).all() and (err(searched) < err(plain)).any()


@pytest.mark.parametrize(("kwargs", "match"), [({"bits": 5}, "^bits: must be"), ({"group_size": 0}, "^group_size: must be -1"),
                                               ({"method": "awq"}, "unknown method"), ({"damp": 0}, "damp")])
def test_quant_config_validation(kwargs, match):
    with pytest.raises(UserError, match=match):
        QuantConfig(**kwargs)


def test_mse_search_weighted_by_column_importance():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(64, 32, generator=g)
    cw = torch.full((32,), 1e-3)
    cw[:4] = 1.0  # four columns carry almost all the input energy

    def err(grid, cols):
        return (grid.dequantize(grid.quantize(w, 7)) - w)[:, cols].pow(2).sum()

    plain = fit_grid(w, 7, sym=True, mse=True)
    weighted = fit_grid(w, 7, sym=True, mse=True, col_weight=cw)
    assert err(weighted, slice(0, 4)) < err(plain, slice(0, 4))
    weighted_error_total = ((weighted.dequantize(weighted.quantize(w, 7)) - w).abs().pow(2.4) * cw).sum()
    plain_error_total = ((plain.dequantize(plain.quantize(w, 7)) - w).abs().pow(2.4) * cw).sum()
    assert weighted_error_total <= plain_error_total


def test_float32_factorisation_solves_as_well_and_auto_picks_it_for_wide_layers(caplog):
    """The inverse Hessian factorised in float32 (GPTQ's reference precision; the default from
    8192 columns, where float64 doubles the memory) gives the float64 solve's quality."""
    W, H = _problem(cols=160)
    f64 = gptq_quantize(W, H, QuantConfig(bits=3, group_size=32, solve_dtype="float64"))
    f32 = gptq_quantize(W, H, QuantConfig(bits=3, group_size=32, solve_dtype="float32"))
    assert f32.loss == pytest.approx(f64.loss, rel=0.02)
    assert (f32.q != f64.q).float().mean() < 0.02  # a few codes at rounding ties move, no more
    assert f32.loss < rtn_quantize(W, QuantConfig(bits=3, group_size=32), H).loss
    auto = QuantConfig()
    assert (auto.solve_precision(4096), auto.solve_precision(8191), auto.solve_precision(11008)) == \
        ("float64", "float64", "float32")
    assert QuantConfig(solve_dtype="float64").solve_precision(11008) == "float64"
    with pytest.raises(UserError, match="solve dtype"):
        QuantConfig(solve_dtype="float16")
