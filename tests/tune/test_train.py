import itertools

import pytest
import torch

from llmshrink.errors import UserError
from llmshrink.tune.train import lr_factor, train_loop


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    f = [lr_factor(s, 100, 10) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(f[9:]))
    assert f[-1] == pytest.approx(0.1, abs=1e-3)


def test_train_loop_fits_a_linear_map():
    torch.manual_seed(0)
    target = torch.randn(4, 8)
    w = torch.nn.Parameter(torch.zeros(4, 8))
    xs = (torch.randn(16, 8) for _ in range(300))
    stats = train_loop([w], xs, lambda x: ((x @ w.T - x @ target.T) ** 2).mean(), steps=300, lr=0.05)
    assert stats.steps == 300 and len(stats.losses) == 300 and stats.tokens == 300 * 16 * 8
    assert stats.mean_loss(False) < 0.01 * stats.mean_loss(True)


def test_train_loop_needs_parameters():
    with pytest.raises(ValueError, match="no trainable parameters"):
        train_loop([], iter([]), lambda x: x, steps=1, lr=0.1)


def test_parameter_groups_keep_their_own_rates_under_the_schedule():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    seen = []
    train_loop([{"params": [a], "lr": 0.01}, {"params": [b], "lr": 0.001}], itertools.repeat(None),
               lambda _: (a - 1).pow(2).sum() + (b - 1).pow(2).sum(), steps=20, lr=0.1, tokens_of=lambda _: 1,
               on_step=lambda s, opt, st: seen.append([g["lr"] for g in opt.param_groups]))
    assert all(x == pytest.approx(10 * y) for x, y in seen)
    assert seen[-1][0] < seen[5][0]  # both follow the cosine decay
    assert 0 < b.detach().mean() < a.detach().mean() < 1  # the slower group moved less


def test_a_non_finite_loss_stops_before_the_step_with_the_step_named():
    w = torch.nn.Parameter(torch.ones(2))
    seen = []
    batches = iter([torch.ones(2), torch.tensor([float("inf"), 1.0]), torch.ones(2)])
    with pytest.raises(UserError, match="non-finite .* at step 2: lower --lr"):
        train_loop([w], batches, lambda b: (w * b).sum(), steps=3, lr=0.1,
                   on_step=lambda step, opt, stats: seen.append((step, w.detach().clone())))
    assert [s for s, _ in seen] == [1] and torch.isfinite(w).all() and torch.equal(w.detach(), seen[0][1])
