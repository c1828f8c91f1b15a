import pytest
import torch

from llmshrink.data.calib import corpus_windows
from llmshrink.data.mix import Part, check_data, parse_mix, share
from llmshrink.errors import UserError


def test_parse_weights_default_one_and_plain_corpus():
    assert parse_mix("a.txt:0.5,shakespeare:calib:1.5") == [Part("a.txt", 0.5), Part("shakespeare:calib", 1.5)]
    assert parse_mix("shakespeare:calib,brown:2") == [Part("shakespeare:calib", 1.0), Part("brown", 2.0)]
    assert parse_mix("shakespeare:calib") == [Part("shakespeare:calib", 1.0)]  # a split, not a weight
    assert parse_mix("hf:wikitext:wikitext-2-raw-v1:train") == [Part("hf:wikitext:wikitext-2-raw-v1:train", 1.0)]


def test_a_file_whose_name_has_a_comma_is_one_corpus(tmp_path):
    f = tmp_path / "a,b:2.txt"
    f.write_text("text")
    assert parse_mix(str(f)) == [Part(str(f), 1.0)]


@pytest.mark.parametrize(("spec", "match"), [
    ("a.txt:0,b.txt", "must be > 0"),
    ("a.txt:-1,b.txt", "must be > 0"),
    ("a.txt,,b.txt", "empty part"),
    ("a.txt:1,a.txt:2", "appears twice"),
    ("  ", "corpus is empty"),
])
def test_bad_mixes_name_the_fix(spec, match):
    with pytest.raises(UserError, match=match):
        parse_mix(spec)


def test_check_data_checks_every_part(tmp_path):
    (tmp_path / "a.txt").write_text("some text")
    check_data(f"{tmp_path / 'a.txt'}:1,shakespeare:calib:1")  # names are checked, nothing is read
    with pytest.raises(UserError, match="unknown corpus 'nosuch'"):
        check_data(f"{tmp_path / 'a.txt'}:1,nosuch:1")
    with pytest.raises(UserError, match="no split 'train'"):
        check_data("shakespeare:calib:1,brown:train:1")


@pytest.mark.parametrize(("n", "weights", "counts"), [
    (8, (1, 1), [4, 4]),
    (7, (1, 1), [4, 3]),  # ties to the earlier part
    (10, (0.25, 0.5, 0.25), [3, 5, 2]),
    (100, (1, 3), [25, 75]),
    (2, (1, 1, 1), [1, 1, 0]),
])
def test_share_is_proportional_and_adds_up(n, weights, counts):
    got = share(n, [Part(str(i), w) for i, w in enumerate(weights)])
    assert got == counts and sum(got) == n


def _corpora(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(" ".join(["apple"] * 400))
    b.write_text(" ".join(["zebra"] * 400))
    return a, b


def test_mixed_windows_come_from_each_part_in_its_share_shuffled(tmp_path, tokenizer):
    a, b = _corpora(tmp_path)
    rows = corpus_windows(f"{a}:1,{b}:3", tokenizer, 16, 8, seed=3)
    ida, idb = (set(tokenizer(f.read_text(), add_special_tokens=False)["input_ids"]) for f in (a, b))
    ida, idb = ida - idb, idb - ida  # the ids only one of the two texts has
    from_a = [bool(set(r.tolist()) & ida) and not set(r.tolist()) & idb for r in rows]
    from_b = [bool(set(r.tolist()) & idb) and not set(r.tolist()) & ida for r in rows]
    assert sum(from_a) == 4 and sum(from_b) == 12
    assert from_a != sorted(from_a, reverse=True)  # shuffled, not four of a then twelve of b
    assert torch.equal(rows, corpus_windows(f"{a}:1,{b}:3", tokenizer, 16, 8, seed=3))  # same seed, same windows
    assert not torch.equal(rows, corpus_windows(f"{a}:1,{b}:3", tokenizer, 16, 8, seed=4))


def test_one_corpus_gives_the_windows_it_always_gave(tmp_path, tokenizer):
    a, _ = _corpora(tmp_path)
    assert torch.equal(corpus_windows(str(a), tokenizer, 8, 8, seed=1), corpus_windows(f"{a}:2", tokenizer, 8, 8, seed=1))


def test_a_mix_is_refused_where_one_corpus_is_read(tmp_path):
    from llmshrink.data.corpora import load_corpus

    a, b = _corpora(tmp_path)
    with pytest.raises(UserError, match="only calibration windows take"):
        load_corpus(f"{a},{b}")
