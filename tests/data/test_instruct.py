import json

import pytest
import torch

from llmshrink.data.instruct import (
    IGNORE,
    collate,
    read_conversations,
    segments,
    tokenize_conversation,
    tokenize_dataset,
)
from llmshrink.errors import UserError

ALPACA = [
    {"instruction": "Name a colour.", "output": "Blue."},
    {"instruction": "Translate.", "input": "hello", "output": "hola"},
]
SHAREGPT = [
    {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                       {"from": "gpt", "value": "Hello."}, {"from": "human", "value": "Bye"},
                       {"from": "gpt", "value": "Farewell."}]},
    {"conversations": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]},
]


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_alpaca_and_sharegpt_records_become_conversations(tmp_path):
    a = read_conversations(_jsonl(tmp_path / "a.jsonl", ALPACA), "alpaca")
    assert [c.turns[0][1] for c in a] == ["Blue.", "hola"] and a[1].turns[0][0].input == "hello"
    s = read_conversations(_jsonl(tmp_path / "s.jsonl", SHAREGPT), "sharegpt")
    assert s[0].system == "Be brief." and [t[1] for t in s[0].turns] == ["Hello.", "Farewell."]
    assert s[1].turns[0][0].instruction == "Q?" and read_conversations(tmp_path / "s.jsonl", "vicuna")[1].turns


@pytest.mark.parametrize("row, fmt, message", [
    ('{"instruction": "x", "output": ', "alpaca", "not a valid JSON object"),
    ({"instruction": "x"}, "alpaca", "lacks the field 'output'"),
    ({"text": "x"}, "sharegpt", "lacks the field 'conversations'"),
    ({"conversations": [{"from": "gpt", "value": "x"}]}, "sharegpt", "out of turn"),
    ({"conversations": [{"from": "human", "value": "x"}]}, "sharegpt", "no answered turn"),
])
def test_a_bad_line_is_reported_by_file_and_line(tmp_path, row, fmt, message):
    path = _jsonl(tmp_path / "d.jsonl", [ALPACA[0] if fmt == "alpaca" else SHAREGPT[1], row])
    with pytest.raises(UserError, match=rf"d\.jsonl:2.*{message}.*--skip-bad-lines"):
        read_conversations(path, fmt)
    assert len(read_conversations(path, fmt, skip_bad_lines=True)) == 1


def test_empty_or_missing_datasets_are_refused(tmp_path):
    with pytest.raises(UserError, match="empty"):
        read_conversations(_jsonl(tmp_path / "e.jsonl", []), "alpaca")
    with pytest.raises(UserError, match="empty"):
        read_conversations(_jsonl(tmp_path / "b.jsonl", ["{oops"]), "alpaca", skip_bad_lines=True)
    with pytest.raises(UserError, match="does not exist"):
        read_conversations(tmp_path / "nope.jsonl", "alpaca")


@pytest.mark.parametrize("template", ["alpaca", "vicuna", "spanish", "none", "chat"])
def test_only_response_tokens_are_labelled(tmp_path, tokenizer, template):
    conv = read_conversations(_jsonl(tmp_path / "s.jsonl", SHAREGPT), "sharegpt")[0]
    t = tokenize_conversation(conv, template, tokenizer, 10_000)
    assert len(t.ids) == len(t.labels)
    learned = [i for i, lab in zip(t.ids, t.labels, strict=True) if lab != IGNORE]
    assert all(lab in (IGNORE, i) for i, lab in zip(t.ids, t.labels, strict=True))
    text = tokenizer.decode(learned)
    assert "Hello." in text and "Farewell." in text and "Hi" not in text and "Bye" not in text
    assert text.count("</s>") == 2  # each answer ends with the end-of-turn token, which is learned
    prompt = tokenizer.decode([i for i, lab in zip(t.ids, t.labels, strict=True) if lab == IGNORE])
    assert "Hi" in prompt and "Bye" in prompt and "Be brief." in prompt


def test_chat_segments_follow_the_tokenizers_template(tokenizer):
    from llmshrink.data.instruct import Conversation
    from llmshrink.data.templates import Example

    segs = segments(Conversation([(Example("Hi"), "Hello.")]), "chat", tokenizer)
    assert segs == [("<|user|>Hi</s><|assistant|>", False), ("Hello.</s>", True)]


def test_truncation_drops_examples_without_a_response(tmp_path, tokenizer):
    convs = read_conversations(_jsonl(tmp_path / "a.jsonl", ALPACA), "alpaca")
    with pytest.raises(UserError, match="raise --seqlen"):
        tokenize_dataset(convs, "alpaca", tokenizer, 8)
    assert len(tokenize_dataset(convs, "none", tokenizer, 10_000)) == 2


def test_collate_pads_right_with_ignored_labels(tmp_path, tokenizer):
    toks = tokenize_dataset(read_conversations(_jsonl(tmp_path / "a.jsonl", ALPACA), "alpaca"), "alpaca",
                            tokenizer, 10_000)
    ids, labels, real = collate(toks, pad_id=2)
    n0 = len(toks[0].ids)
    short = 0 if n0 < len(toks[1].ids) else 1
    n = len(toks[short].ids)
    assert ids.shape == labels.shape and ids.shape[1] == max(len(t.ids) for t in toks)
    assert torch.all(ids[short, n:] == 2) and torch.all(labels[short, n:] == IGNORE)
    assert ids[short, :n].tolist() == toks[short].ids
    assert real.sum(1).tolist() == [len(t.ids) for t in toks]
