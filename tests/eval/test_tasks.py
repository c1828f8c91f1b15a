import json
import random

import pytest

from llmshrink.data.corpora import Corpus, Document
from llmshrink.errors import UserError
from llmshrink.eval.tasks import TaskParams, build_cloze4, build_lastword, write_task_file


def _corpus(n_words=3000, seed=0, name="synthetic"):
    rng = random.Random(seed)
    vocab = [f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "su", "ta") for b in ("rin", "dol", "vex", "pum", "zed")]
    words = [rng.choice(vocab) + rng.choice(["", ",", ".", ";"]) for _ in range(n_words)]
    return Corpus(name, (Document("a", " ".join(words[: n_words // 2])), Document("b", " ".join(words[n_words // 2:]))))


def test_items_are_deterministic_and_cached_byte_for_byte(tmp_path):
    c, p = _corpus(), TaskParams()
    assert build_lastword(c, p) == build_lastword(c, p)
    assert build_cloze4(c, p) == build_cloze4(c, p)
    assert build_cloze4(c, p) != build_cloze4(c, TaskParams(seed=7))
    path1, n1 = write_task_file("cloze4", c, p, tmp_path / "a")
    path2, n2 = write_task_file("cloze4", c, p, tmp_path / "b")
    assert path1.name == path2.name and n1 == n2 and path1.read_bytes() == path2.read_bytes()
    assert [json.loads(line) for line in path1.open()] == build_cloze4(c, p)
    other, _ = write_task_file("cloze4", _corpus(seed=1), p, tmp_path / "a")
    assert other != path1  # a different corpus never reuses the cached file


def test_lastword_target_is_the_next_word_of_the_corpus_without_punctuation():
    c, p = _corpus(), TaskParams(context_words=10)
    text = " ".join(d.text for d in c.documents)
    items = build_lastword(c, p)
    assert len(items) > 100
    for it in items[:50]:
        assert len(it["context"].split()) == 10
        assert it["target"].isalpha() and len(it["target"]) >= 3
        assert f"{it['context']} {it['target']}" in text


def test_cloze4_has_the_true_continuation_at_a_cycling_position_and_three_others():
    c, p = _corpus(), TaskParams(context_words=12, choice_words=6)
    text = " ".join(d.text for d in c.documents)
    items = build_cloze4(c, p)
    assert [it["label"] for it in items[:8]] == [0, 1, 2, 3, 0, 1, 2, 3]
    for it in items[:50]:
        assert len(it["choices"]) == 4 and len(set(it["choices"])) == 4
        assert f"{it['context']} {it['choices'][it['label']]}" in text
        assert all(len(ch.split()) == 6 for ch in it["choices"])


def test_a_corpus_too_short_is_a_clear_error(tmp_path):
    tiny = Corpus("tiny", (Document("a", "only a few words here"),))
    with pytest.raises(UserError, match="too short for cloze4"):
        build_cloze4(tiny, TaskParams())
    with pytest.raises(UserError, match="no lastword items"):
        write_task_file("lastword", tiny, TaskParams(), tmp_path)
