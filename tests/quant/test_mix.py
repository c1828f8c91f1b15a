"""Mixed precision (quant.mix): storage accounting, the allocation, and the sensitivity pass."""

import itertools
import random

import pytest
import torch

from llmshrink.errors import UserError
from llmshrink.models.arch import arch_of
from llmshrink.quant.config import QuantConfig
from llmshrink.quant.gptq import rtn_quantize
from llmshrink.quant.mix import (
    MixConfig,
    _hull,
    allocate,
    layer_sensitivity,
    plan_bits,
    relative_errors,
    stored_bits,
)
from tests.conftest import make_tiny_model


def test_stored_bits_count_codes_zeros_and_fp16_scales_of_ragged_groups():
    # 576 columns in groups of 128: 5 groups, the last of 64 (the default model's width)
    assert stored_bits(3, (192, 576), 128) == 192 * 576 * 3 + 5 * 192 * (3 + 16)
    assert stored_bits(4, (64, 64), 64) == 64 * 64 * 4 + 64 * 20


def test_hull_keeps_only_widths_worth_their_bits():
    # (cost, error, width): 3 bits removes less per bit than going on to 4 does -> 3 is skipped;
    # 8 bits removing nothing more is dropped
    pts = [(2, 10.0, 2), (3, 9.0, 3), (4, 2.0, 4), (8, 2.0, 8)]
    assert [p[2] for p in _hull(pts)] == [2, 4]
    pts = [(2, 10.0, 2), (3, 4.0, 3), (4, 2.0, 4), (8, 1.0, 8)]
    assert [p[2] for p in _hull(pts)] == [2, 3, 4, 8]


def _instance(seed: int, n: int = 4):
    rng = random.Random(seed)
    costs, errors = {}, {}
    for i in range(n):
        size = rng.choice([1, 2, 4])
        costs[f"l{i}"] = {b: size * b for b in (2, 3, 4, 8)}
        e = rng.uniform(0.5, 5.0)
        errors[f"l{i}"] = {b: e * 4.0 ** -b for b in (2, 3, 4, 8)}  # rounding error falls ~4x per bit
    return costs, errors


@pytest.mark.parametrize("seed", range(5))
def test_allocation_stays_in_budget_and_matches_the_exhaustive_optimum_on_small_cases(seed):
    costs, errors = _instance(seed)
    weights = sum(c[2] // 2 for c in costs.values())
    for bpw in (2.0, 2.5, 3.0, 3.5, 4.0, 6.0, 8.0):
        got = allocate(costs, errors, bpw * weights, weights)
        assert got.bpw <= bpw + 1e-9
        best = min(sum(errors[n][b] for n, b in zip(costs, combo, strict=True))
                   for combo in itertools.product((2, 3, 4, 8), repeat=len(costs))
                   if sum(costs[n][b] for n, b in zip(costs, combo, strict=True)) <= bpw * weights)
        assert got.error <= best * 1.5 + 1e-12, (bpw, got.bits)  # greedy on the hulls: near the optimum
    assert set(allocate(costs, errors, 8 * weights, weights).bits.values()) == {8}
    assert set(allocate(costs, errors, 2 * weights, weights).bits.values()) == {2}


def test_more_budget_never_raises_the_error_and_sensitive_layers_get_the_bits():
    costs = {"flat": {b: 100 * b for b in (2, 3, 4, 8)}, "sharp": {b: 100 * b for b in (2, 3, 4, 8)}}
    errors = {"flat": {2: 0.02, 3: 0.01, 4: 0.005, 8: 0.0}, "sharp": {2: 2.0, 3: 0.5, 4: 0.12, 8: 0.0005}}
    got = allocate(costs, errors, 3.5 * 200, 200)
    assert got.bits["sharp"] > got.bits["flat"]
    errs = [allocate(costs, errors, b * 200, 200).error for b in (2, 2.5, 3, 3.5, 4, 5, 6, 8)]
    assert errs == sorted(errs, reverse=True)


def test_a_budget_below_the_narrowest_widths_is_refused():
    costs, errors = _instance(0)
    weights = sum(c[2] // 2 for c in costs.values())
    with pytest.raises(UserError, match="--target-bpw 1.500 is below the 2.000 bits per weight of the narrowest"):
        allocate(costs, errors, 1.5 * weights, weights)


def test_mix_config_checks_its_fields():
    assert MixConfig(bit_choices="8, 3,4").choices == (3, 4, 8)
    with pytest.raises(Exception, match="bit_choices"):
        MixConfig(bit_choices="3,5")
    with pytest.raises(Exception, match="target_bpw"):
        MixConfig(target_bpw=0)


def test_relative_errors_fall_with_width_and_weigh_the_inputs():
    torch.manual_seed(0)
    W = torch.randn(64, 128)
    X = torch.randn(512, 128) * torch.linspace(0.1, 3, 128)  # uneven input energy
    H = (X.T @ X).double()
    e = relative_errors(W, H, QuantConfig(group_size=32), (2, 3, 4, 8))
    assert e[2] > e[3] > e[4] > e[8] > 0 and e[8] < 1e-3
    plain = relative_errors(W, None, QuantConfig(group_size=32), (4,))[4]  # no H: the plain squared error's share
    q = rtn_quantize(W, QuantConfig(group_size=32, bits=4)).dequantize()
    assert plain == pytest.approx(float(((W - q) ** 2).sum() / (W**2).sum()), rel=1e-6)
    weighted = float((((W - q) @ H.float()) * (W - q)).sum() / ((W @ H.float()) * W).sum())
    assert e[4] == pytest.approx(weighted, rel=1e-4)


def test_sensitivity_pass_measures_every_linear_and_leaves_the_model_as_it_was():
    model = make_tiny_model(64, layers=2, hidden=64, intermediate=128)
    arch = arch_of(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    windows = torch.randint(0, 64, (4, 16))
    errors = layer_sensitivity(model, arch, windows, QuantConfig(group_size=32), (2, 4), range(2), batch_size=2)
    assert set(errors) == {f"model.layers.{i}.{n}" for i in range(2) for n in arch.linear_names}
    assert all(e[2] > e[4] > 0 for e in errors.values())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    shapes = {n: tuple(model.get_submodule(n).weight.shape) for n in errors}
    plan = plan_bits(shapes, errors, QuantConfig(group_size=32), MixConfig(target_bpw=3.5, bit_choices="2,4"))
    assert set(plan.bits.values()) == {2, 4} and plan.bpw <= 3.5
