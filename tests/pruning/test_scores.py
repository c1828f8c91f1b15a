import math

import pytest
import torch

from llmshrink.errors import UserError
from llmshrink.models.arch import arch_of
from llmshrink.pruning.scores import (
    BlockScores,
    _nll_sum,
    ppl_leave_one_out,
    ppl_leave_one_out_naive,
    score_blocks,
)
from tests.conftest import make_tiny_model


def _batches(vocab=64, n=6, seqlen=24):
    ids = torch.randint(0, vocab, (n, seqlen), generator=torch.Generator().manual_seed(1))
    return list(ids.split(4))


def _make_identity(block):
    """Zero the output projections: the block then adds exactly 0 to its input."""
    with torch.no_grad():
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()


def test_cached_ppl_scores_are_identical_to_naive_leave_one_out():
    model = make_tiny_model(64, layers=5)
    arch = arch_of(model)
    cached, detail = ppl_leave_one_out(model, arch, _batches())
    naive, naive_detail = ppl_leave_one_out_naive(model, arch, _batches())
    assert cached == naive  # bit for bit
    assert detail["block_runs"] < naive_detail["block_runs"]
    assert len(arch.blocks(model)) == 5  # the naive pass put the block list back


def test_ppl_of_removing_an_identity_block_is_the_full_models():
    model = make_tiny_model(64, layers=4)
    _make_identity(model.model.layers[2])
    arch = arch_of(model)
    scores, _ = ppl_leave_one_out(model, arch, _batches())
    with torch.no_grad():
        nll = [_nll_sum(model(input_ids=b).logits, b) for b in _batches()]
    full = math.exp(sum(s for s, _ in nll) / sum(c for _, c in nll))
    assert scores[2] == pytest.approx(full, rel=1e-6)


def test_angular_distance_is_zero_for_an_identity_block():
    model = make_tiny_model(64, layers=4)
    _make_identity(model.model.layers[1])
    s = score_blocks(model, arch_of(model), _batches(), "angular")
    assert s.scores[1] < 1e-3 and all(x > 0.01 for i, x in enumerate(s.scores) if i != 1)
    assert all(0 <= x <= 1 for x in s.scores)


def test_taylor_is_zero_for_a_zeroed_block_and_leaves_no_gradients():
    model = make_tiny_model(64, layers=3)
    with torch.no_grad():
        for p in model.model.layers[1].parameters():
            p.zero_()
    model.lm_head.weight.requires_grad_(True)
    s = score_blocks(model, arch_of(model), _batches(), "taylor")
    assert s.scores[1] == 0.0 and s.scores[0] > 0 and s.scores[2] > 0
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_magnitude_needs_no_data_and_ranks_a_shrunk_block_last():
    model = make_tiny_model(64, layers=3)
    with torch.no_grad():
        for m in model.model.layers[2].modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(0.5)
    s = score_blocks(model, arch_of(model), None, "magnitude")
    expected = sum(float(m.weight.detach().abs().sum()) for m in model.model.layers[0].modules()
                   if isinstance(m, torch.nn.Linear))
    assert s.scores[0] == pytest.approx(expected, rel=1e-6)
    assert s.order()[0] == 2


def test_order_respects_kept_blocks_and_breaks_ties_by_depth():
    s = BlockScores("x", [0.0, 5.0, 1.0, 1.0, 0.5], 0.0)
    assert s.order() == [0, 4, 3, 2, 1]
    assert s.order(keep_first=1, keep_last=1) == [3, 2, 1]


def test_score_blocks_rejects_bad_input():
    model = make_tiny_model(64)
    with pytest.raises(UserError, match="unknown criterion 'cosine'"):
        score_blocks(model, arch_of(model), _batches(), "cosine")
    with pytest.raises(UserError, match="needs scoring data"):
        score_blocks(model, arch_of(model), [], "ppl")
