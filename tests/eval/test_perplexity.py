import math

import pytest
import torch

from llmshrink.eval.perplexity import perplexity
from tests.conftest import make_tiny_model

VOCAB = 64


def _hand_perplexity(model, stream, seqlen, stride=None, bos=None):
    """Token by token, window by window, in float64: the definition, written out."""
    length = seqlen - 1 if bos is not None else seqlen
    step = stride or length
    total, count, scored_until = 0.0, 0, 0 if bos is not None else 1
    begin = 0
    while begin + length <= stream.numel():
        ids = stream[begin: begin + length].tolist()
        if bos is not None:
            ids = [bos, *ids]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
        offset = 1 if bos is not None else 0
        for j in range(1, len(ids)):
            pos = begin + j - offset  # stream position of target ids[j]
            if pos >= scored_until:
                total -= float(logp[j - 1, ids[j]])
                count += 1
        scored_until = begin + length
        begin += step
    return math.exp(total / count), count


@pytest.mark.parametrize(("stride", "bos"), [(None, None), (None, 1), (8, None), (5, 1)])
def test_matches_hand_computation(stride, bos):
    model = make_tiny_model(VOCAB, seed=1)
    stream = torch.randint(3, VOCAB, (203,), generator=torch.Generator().manual_seed(0))
    res = perplexity(model, stream, seqlen=32, stride=stride, bos=bos, batch_size=3)
    expected, count = _hand_perplexity(model, stream, 32, stride, bos)
    assert res.tokens == count
    assert res.perplexity == pytest.approx(expected, rel=1e-5)
    assert res.perplexity > 1.0


def test_uniform_model_has_perplexity_vocab_size():
    model = make_tiny_model(VOCAB, tie=False)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # logits all zero: p = 1/V for every token
    stream = torch.randint(0, VOCAB, (130,), generator=torch.Generator().manual_seed(0))
    res = perplexity(model, stream, seqlen=16, batch_size=4)
    assert res.perplexity == pytest.approx(VOCAB, rel=1e-6)
    assert res.tokens == (130 // 16) * 15 and res.windows == 130 // 16


def test_batch_size_does_not_change_result():
    model = make_tiny_model(VOCAB, seed=2)
    stream = torch.randint(0, VOCAB, (300,), generator=torch.Generator().manual_seed(1))
    a = perplexity(model, stream, seqlen=20, batch_size=1)
    b = perplexity(model, stream, seqlen=20, batch_size=7)
    assert a.perplexity == pytest.approx(b.perplexity, rel=1e-6) and a.tokens == b.tokens
