"""Pre-tokenizers by llama.cpp's name, both ways (tokenizer.json parts <-> tokenizer.ggml.pre)."""

import json

import pytest
from tokenizers import Tokenizer, models

from llmshrink.models.pretokenizers import PARTS, name_of, restore, spec_for


def _tokenizer(name: str) -> Tokenizer:
    spec = json.loads(Tokenizer(models.BPE()).to_str())
    assert spec["pre_tokenizer"] is None and restore(spec, name)
    return Tokenizer.from_str(json.dumps(spec))


@pytest.mark.parametrize("name", list(PARTS))
def test_every_name_round_trips_through_a_real_tokenizer(name):
    back = json.loads(_tokenizer(name).to_str())  # tokenizers accepts the parts and writes them back
    assert name_of(back["pre_tokenizer"]) == name


def test_the_names_split_text_as_llama_cpp_does():
    split = {name: [p for p, _ in _tokenizer(name).pre_tokenizer.pre_tokenize_str("In  2026, we're")]
             for name in PARTS}
    assert split["gpt-2"] == ["In", "Ġ", "Ġ2026", ",", "Ġwe", "'re"]
    assert split["smollm"] == ["In", "ĠĠ", "2", "0", "2", "6", ",", "Ġwe", "'re"]  # digits one by one
    assert split["llama-bpe"] == ["In", "Ġ", "Ġ", "202", "6", ",", "Ġwe", "'re"]  # at most three digits
    assert split["qwen2"] == ["In", "Ġ", "Ġ", "2", "0", "2", "6", ",", "Ġwe", "'re"]


def test_restore_changes_only_what_differs():
    spec = {"pre_tokenizer": spec_for("gpt-2")}
    assert restore(spec, "smollm") and name_of(spec["pre_tokenizer"]) == "smollm"
    assert not restore(spec, "smollm")  # already so: unchanged
    assert not restore(spec, "no-such-name") and name_of(spec["pre_tokenizer"]) == "smollm"
    assert name_of({"type": "Metaspace"}) is None and name_of(None) is None and spec_for("x") is None
