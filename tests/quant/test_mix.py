"""Mixed precision (quant.mix): storage accounting, the allocation, and the sensitivity pass."""

import itertools
import random

import pytest
import torch

from llmshrink.errors import UserError
from llmshrink.models.arch import arch_of
from llmshrink.quant.config import QuantConfig
from llmshrink.quant.gptq import rtn_quantize
from llmshrink.quant.mix import MixConfig, _hull, allocate, fisher_errors, plan_bits, stored_bits
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


def test_fisher_errors_are_half_the_squared_gradient_weighted_rounding_error_and_leave_the_model_alone():
    model = make_tiny_model(64, layers=2, hidden=64, intermediate=128)
    arch = arch_of(model)
    names = [f"model.layers.{i}.{n}" for i in range(2) for n in arch.linear_names]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    windows = torch.randint(0, 64, (3, 16))
    cfg = QuantConfig(group_size=32)
    errors = fisher_errors(model, names, windows, cfg, (2, 4, 8))
    assert set(errors) == set(names) and all(e[2] > e[4] > e[8] > 0 for e in errors.values())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())  # as they were
    name = "model.layers.1.mlp.down_proj"  # by hand: the squared gradients of each window's loss
    w = model.get_submodule(name).weight
    F = sum(torch.autograd.grad(model(input_ids=x[None], labels=x[None]).loss, w)[0] ** 2 for x in windows) / 3
    dW = w.detach() - rtn_quantize(w.detach(), QuantConfig(group_size=32, bits=4)).dequantize()
    assert errors[name][4] == pytest.approx(0.5 * float((F * dW**2).sum()), rel=1e-4)
    plan = plan_bits({n: tuple(model.get_submodule(n).weight.shape) for n in names}, errors, cfg,
                     MixConfig(target_bpw=3.5, bit_choices="2,4"))
    assert set(plan.bits.values()) == {2, 4} and plan.bpw <= 3.5


def test_a_layer_the_loss_does_not_reach_costs_nothing_and_gets_the_narrowest_width():
    model = make_tiny_model(64, layers=2, hidden=64, intermediate=128)
    with torch.no_grad():  # block 1's attention output zeroed: its v_proj no longer reaches the loss
        model.get_submodule("model.layers.1.self_attn.o_proj").weight.zero_()
    names = ["model.layers.1.self_attn.v_proj", "model.layers.1.mlp.down_proj"]
    errors = fisher_errors(model, names, torch.randint(0, 64, (2, 16)), QuantConfig(group_size=32), (2, 4))
    assert errors[names[0]] == {2: 0.0, 4: 0.0} and errors[names[1]][2] > 0
    shapes = {n: tuple(model.get_submodule(n).weight.shape) for n in names}
    plan = plan_bits(shapes, errors, QuantConfig(group_size=32), MixConfig(target_bpw=4.3, bit_choices="2,4"))
    assert plan.bits == {names[0]: 2, names[1]: 4}
