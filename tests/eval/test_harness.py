"""The lm-eval adapter: built-in tasks scored by lm-evaluation-harness itself."""

import random

import pytest

pytest.importorskip("lm_eval")

from lm_eval.api.model import LM

from llmshrink.cli import main
from llmshrink.data.corpora import load_corpus
from llmshrink.errors import UserError
from llmshrink.eval.harness import TaskRequest, evaluate, run_tasks
from llmshrink.eval.tasks import TaskParams, build_cloze4, build_lastword


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    rng = random.Random(0)
    vocab = [f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "su", "ta", "vo") for b in ("rin", "dol", "vex", "pum")]
    path = tmp_path_factory.mktemp("corpus") / "words.txt"
    path.write_text(" ".join(rng.choice(vocab) for _ in range(6000)))
    return path


class Oracle(LM):
    """Knows every answer: log-likelihood 0 and greedy for the right continuation, -10 otherwise."""

    def __init__(self, answers: set[tuple[str, str]], uniform: bool = False):
        super().__init__()
        self.answers, self.uniform, self.seen = answers, uniform, 0

    def loglikelihood(self, requests):
        out = []
        for r in requests:
            self.seen += 1
            ctx, cont = r.args
            if self.uniform:  # the same score for every continuation: cannot tell choices apart
                out.append((0.0, False))
            else:
                right = (ctx, cont.strip()) in self.answers
                out.append((0.0, True) if right else (-10.0, False))
        return out

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError

    def generate_until(self, requests):
        raise NotImplementedError


def _answers(path):
    c, p = load_corpus(str(path)), TaskParams()
    return ({(it["context"], it["target"]) for it in build_lastword(c, p)}
            | {(it["context"], it["choices"][it["label"]]) for it in build_cloze4(c, p)})


def test_a_model_that_knows_the_answers_scores_one_and_a_uniform_one_scores_chance(corpus_file):
    req = TaskRequest(("lastword", "cloze4"), data=str(corpus_file), limit=40)
    oracle = Oracle(_answers(corpus_file))
    right = evaluate(oracle, req)["tasks"]
    assert oracle.seen == 40 + 4 * 40  # every item went through the harness's requests
    assert right["lastword"]["score"] == 1.0 and right["lastword"]["items"] == 40
    assert right["cloze4"]["metrics"]["acc"] == 1.0 and right["cloze4"]["score"] == 1.0
    uniform = evaluate(Oracle(set(), uniform=True), req)["tasks"]
    assert uniform["lastword"]["score"] == 0.0
    # lm-eval breaks ties towards the first choice; the gold position cycles over 0..3.
    assert uniform["cloze4"]["metrics"]["acc"] == 0.25 and uniform["cloze4"]["score"] == 0.25


def test_bad_requests_are_clear_errors(corpus_file):
    with pytest.raises(UserError, match="^limit: must be a positive"):
        TaskRequest(("lastword",), limit=0)
    with pytest.raises(UserError, match="no tasks"):
        TaskRequest(())
    with pytest.raises(UserError, match="unknown task 'lastwrod'"):
        evaluate(Oracle(set()), TaskRequest(("lastwrod",), data=str(corpus_file)))


def test_your_own_items_run_from_a_jsonl_file_and_bad_files_name_the_line(tmp_path, corpus_file):
    import json

    items = [{"context": "one two three", "choices": ["four", "x", "y"], "label": 0},
             {"context": "five six", "choices": ["q", "seven"], "label": 1}]
    good = tmp_path / "my items.jsonl"
    good.write_text("".join(json.dumps(i) + "\n" for i in items))
    answers = {(i["context"], i["choices"][i["label"]]) for i in items}
    res = evaluate(Oracle(answers), TaskRequest((f"cloze4={good}",), data=str(corpus_file)))["tasks"]
    assert list(res) == ["cloze4_my_items"] and res["cloze4_my_items"]["score"] == 1.0
    assert res["cloze4_my_items"]["items"] == 2 == res["cloze4_my_items"]["available"]

    def bad(text, match, kind="cloze4"):
        f = tmp_path / "bad.jsonl"
        f.write_text(text)
        with pytest.raises(UserError, match=match):
            evaluate(Oracle(set()), TaskRequest((f"{kind}={f}",), data=str(corpus_file)))

    ok = json.dumps(items[0]) + "\n"
    bad(ok + '{"context": "a", "choices": ["b", "c"]}\n', r"bad.jsonl:2: missing field 'label'")
    bad(ok + "{not json\n", r"bad.jsonl:2: not valid JSON")
    bad('{"context": "a", "choices": ["b", "c"], "label": 2}\n', r"bad.jsonl:1: 'label' 2 is not an index")
    bad('{"context": "a", "target": 3}\n', r"bad.jsonl:1: field 'target' must be a JSON string", kind="lastword")
    bad("\n", "holds no items")
    with pytest.raises(UserError, match="does not exist"):
        evaluate(Oracle(set()), TaskRequest((f"cloze4={tmp_path / 'none.jsonl'}",), data=str(corpus_file)))
    with pytest.raises(UserError, match="item format must be one of"):
        evaluate(Oracle(set()), TaskRequest((f"hellaswag={good}",), data=str(corpus_file)))


def test_real_model_plain_and_packed_through_hflm(tmp_path, tiny_model_dir, corpus_file):
    from llmshrink.models.load import load_model

    q = tmp_path / "q"
    assert main(["-q", "quantize", str(tiny_model_dir), "--out", str(q), "--bits", "4", "--group-size", "16",
                 "--calib", str(corpus_file), "--nsamples", "4", "--seqlen", "16"]) == 0
    req = TaskRequest(("lastword", "cloze4"), data=str(corpus_file), limit=8, batch_size=4)
    for path in (tiny_model_dir, q):
        rec = run_tasks(load_model(str(path)), req)
        for name in req.tasks:
            t = rec["tasks"][name]
            assert t["items"] == 8 and 0.0 <= t["score"] <= 1.0 and t["score"] == t["metrics"][t["main_metric"]]
        assert rec["tasks"]["lastword"]["metrics"]["perplexity"] > 1.0


def test_cli_eval_tasks_writes_json_and_rejects_bad_limit(tmp_path, tiny_model_dir, corpus_file, capsys):
    out = tmp_path / "run"
    rc = main(["eval", str(tiny_model_dir), "--data", str(corpus_file), "--tasks", "cloze4", "--limit", "4",
               "--max-tokens", "256", "--seqlen", "64", "--out", str(out)])
    assert rc == 0
    import json

    rec = json.loads((out / "eval.json").read_text())
    assert rec["tasks"]["cloze4"]["items"] == 4 and rec["perplexity"] > 1.0
    assert main(["eval", str(tiny_model_dir), "--tasks", "cloze4", "--limit", "0"]) == 2
    assert "--limit" in capsys.readouterr().err
