import itertools

import pytest
import torch

from llmshrink.data.corpora import Corpus, Document
from llmshrink.data.windows import bos_id, eval_windows, sample_windows, tokenize_corpus
from llmshrink.errors import UserError


def _scored_positions(windows, bos):
    out = []
    for w in windows:
        out.extend(range(w.score_from, w.end))
        assert w.score_from >= (w.begin if bos else w.begin + 1)  # a target always has context
    return out


@pytest.mark.parametrize("bos", [False, True])
def test_non_overlapping_windows(bos):
    ws = eval_windows(1000, 100, bos=bos)
    length = 99 if bos else 100
    assert len(ws) == 1000 // length
    assert all(w.end - w.begin == length for w in ws)
    assert all(b.begin == a.end for a, b in itertools.pairwise(ws))
    scored = _scored_positions(ws, bos)
    assert len(scored) == len(set(scored))  # each token scored at most once
    assert scored[0] == (0 if bos else 1)


def test_strided_windows_score_each_token_once_and_contiguously():
    ws = eval_windows(1000, 100, stride=25)
    scored = _scored_positions(ws, False)
    assert scored == list(range(1, ws[-1].end))
    assert all(w.end - w.begin == 100 for w in ws)
    assert len(ws) == (1000 - 100) // 25 + 1


def test_too_short_corpus_errors():
    with pytest.raises(UserError, match="fewer than one window of 512"):
        eval_windows(100, 512, name="corpus x")
    with pytest.raises(UserError, match="fewer than one window"):
        sample_windows(torch.arange(10), 4, 64)


def test_sample_windows_reproducible_and_contiguous():
    stream = torch.arange(10_000)
    a = sample_windows(stream, 16, 64, seed=3)
    b = sample_windows(stream, 16, 64, seed=3)
    c = sample_windows(stream, 16, 64, seed=4)
    assert a.shape == (16, 64) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a - a[:, :1], torch.arange(64).expand(16, 64))  # contiguous slices of the stream
    with_bos = sample_windows(stream, 16, 64, seed=3, bos=7)
    assert with_bos.shape == (16, 64) and (with_bos[:, 0] == 7).all()
    body = with_bos[:, 1:]
    assert torch.equal(body - body[:, :1], torch.arange(63).expand(16, 63))
    assert torch.equal(with_bos, sample_windows(stream, 16, 64, seed=3, bos=7))


def test_bos_detection(tokenizer, bos_tokenizer):
    assert bos_id(tokenizer) is None
    assert bos_id(bos_tokenizer) == bos_tokenizer.bos_token_id


def test_tokenize_corpus_joins_documents_and_truncates(tokenizer):
    corpus = Corpus("c", (Document("a", "to be"), Document("b", "or not")))
    stream = tokenize_corpus(corpus, tokenizer)
    expected = tokenizer("to be\n\nor not", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(stream) == "to be\n\nor not"
    assert abs(stream.numel() - len(expected)) <= 1
    assert tokenize_corpus(corpus, tokenizer, max_tokens=3).tolist() == stream[:3].tolist()
