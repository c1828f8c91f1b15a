"""Model cards of output folders: rendered from fixture runs of every job, parsed back with
huggingface_hub, each field checked; the usage they print runs; the reproduce command gives the
same settings back."""

import argparse
import json
import re
import shlex
import shutil

import pytest
from huggingface_hub import ModelCard

from llmshrink.cli import main
from llmshrink.config import add_arguments, from_args
from llmshrink.jobs import quantize as quantize_job
from llmshrink.jobs.card import read_records, render_card, write_card


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer):
    """A 4-block tiny source with a card of its own, quantized on blocks 0:2, and that tuned."""
    from tests.conftest import TEXT, make_tiny_model, save_model_dir

    root = tmp_path_factory.mktemp("cards")
    src = save_model_dir(root / "src", make_tiny_model(len(tokenizer), layers=4), tokenizer)
    (src / "README.md").write_text("---\nlicense: mit\nlanguage: [en, es]\n---\n# tiny\n")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "_name_or_path": "someorg/tiny-llama"}))
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT * 8)
    assert main(["-q", "quantize", str(src), "--out", str(root / "q"), "--bits", "4", "--group-size", "16",
                 "--blocks", "0:2", "--calib", f"{corpus}:1", "--nsamples", "4", "--seqlen", "16"]) == 0
    assert main(["-q", "finetune", str(root / "q"), "--out", str(root / "tuned"), "--data", str(corpus),
                 "--train", "last:2", "--steps", "2", "--seqlen", "16", "--batch-size", "2",
                 "--eval-data", str(corpus), "--ood-data", "none", "--eval-tokens", "64"]) == 0
    return {"src": src, "q": root / "q", "tuned": root / "tuned", "corpus": corpus, "root": root}


def _card(folder):
    return ModelCard.load(folder / "README.md")


def test_a_quantized_folder_describes_itself(runs):
    card = _card(runs["q"])
    d = card.data.to_dict()
    assert d["base_model"] == "someorg/tiny-llama" and d["base_model_relation"] == "quantized"
    assert d["license"] == "mit" and d["language"] == ["en", "es"]  # carried from the source's card
    assert d["library_name"] == "transformers" and d["pipeline_tag"] == "text-generation"
    assert d["quantized_by"] == "llmshrink" and {"llmshrink", "gptq", "4-bit"} <= set(d["tags"])
    text = card.text
    assert "GPTQ 4-bit, group size 16 (symmetric grid, act-order, damping 0.01" in text
    assert "decoder blocks 0:2; lm_head in full precision" in text
    assert f"Calibration: 4 windows of 16 tokens of `{runs['corpus']}:1` (seed 0)." in text
    assert f"`{runs['corpus']}`: the user's own text" in text  # the mix's one part, named in Data
    assert "Not measured yet" in text and "model-index" not in str(card)
    assert "are not verified for this folder yet: `llmshrink check q`" in text


def test_the_reproduce_command_gives_the_same_settings(runs):
    text = _card(runs["q"]).text
    line = re.search(r"```bash\n(llmshrink quantize .*)\n```", text).group(1)
    argv = shlex.split(line)
    assert argv[:5] == ["llmshrink", "quantize", str(runs["src"]), "--out", "q"]
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--out")
    add_arguments(parser, quantize_job.PARTS)
    args = parser.parse_args(argv[2:])
    rec = json.loads((runs["q"] / "llmshrink_quantize.json").read_text())
    got = {p.key: from_args(args, p).to_dict() for p in quantize_job.PARTS}
    assert got["quant"] == rec["config"] and got["calib"] == rec["calibration"]
    assert (got["scope"]["blocks"], got["scope"]["lm_head"]) == ("0:2", False)


def test_a_tuned_folder_holds_both_steps_and_its_scores(runs):
    card = _card(runs["tuned"])
    d = card.data.to_dict()
    assert d["base_model"] == "someorg/tiny-llama" and d["base_model_relation"] == "quantized"
    assert "tail-finetuned" in d["tags"]
    ev = json.loads((runs["tuned"] / "llmshrink_finetune.json").read_text())["evaluation"]["held_out"]
    [result] = d["model-index"][0]["results"]
    assert result["dataset"]["name"] == str(runs["corpus"])
    assert result["metrics"][0] == {"type": "perplexity", "value": round(ev["after"]["perplexity"], 4),
                                    "name": f"perplexity ({ev['tokens']:,} tokens)"}
    text = card.text
    assert text.index("GPTQ 4-bit") < text.index("Fine-tuned blocks 2:4")
    row = f"| `{runs['corpus']}` | {ev['tokens']:,} | {ev['after']['perplexity']:.3f} | {ev['before']['perplexity']:.3f} |"
    assert row in text
    assert len(re.findall(r"^llmshrink (quantize|finetune) ", text, re.M)) == 2


def test_eval_keeps_its_score_and_the_card_shows_it(runs, tmp_path, capsys):
    q = tmp_path / "q"
    shutil.copytree(runs["q"], q)
    for _ in range(2):  # the same evaluation twice: one entry
        assert main(["eval", str(q), "--data", str(runs["corpus"]), "--seqlen", "16", "--max-tokens", "64"]) == 0
    assert "model card" in capsys.readouterr().out
    kept = json.loads((q / "llmshrink_evals.json").read_text())
    assert len(kept) == 1 and kept[0]["data"] == str(runs["corpus"]) and kept[0]["tokens"] == 60
    card = _card(q)
    assert card.data.to_dict()["model-index"][0]["results"][0]["metrics"][0]["value"] == round(kept[0]["perplexity"], 4)
    assert f"| {kept[0]['perplexity']:.3f} |" in card.text and "| eval |" in card.text
    assert main(["eval", str(q), "--data", str(runs["corpus"]), "--seqlen", "16", "--max-tokens", "32"]) == 0
    assert len(json.loads((q / "llmshrink_evals.json").read_text())) == 2  # another window count: kept beside


def test_the_usage_the_card_prints_runs(runs, monkeypatch, capsys):
    monkeypatch.chdir(runs["root"])
    text = _card(runs["q"]).text
    [gen] = re.findall(r"^llmshrink generate .*$", text, re.M)
    assert main([*shlex.split(gen)[1:], "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip()


def test_card_again_is_the_same_and_refuses_other_folders(runs, tmp_path, capsys):
    assert render_card(runs["tuned"]) == (runs["tuned"] / "README.md").read_text()
    assert main(["card", str(runs["tuned"])]) == 0
    assert render_card(runs["tuned"]) == (runs["tuned"] / "README.md").read_text()
    assert main(["card", str(runs["src"])]) == 2
    assert "is not a folder llmshrink wrote" in capsys.readouterr().err
    assert not read_records(runs["src"])


def test_a_pruned_folder_is_a_plain_model_whose_snippet_loads(runs, tmp_path, monkeypatch):
    out = tmp_path / "pruned"
    assert main(["-q", "prune", str(runs["src"]), "--out", str(out), "--remove", "1", "--criterion", "magnitude"]) == 0
    card = _card(out)
    d = card.data.to_dict()
    assert d["base_model_relation"] == "finetune" and "quantized_by" not in d and "depth-pruned" in d["tags"]
    assert "Removed decoder blocks [" in card.text and "magnitude importance" in card.text
    code = re.search(r"```python\n(.*?)```", card.text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(code, scope)  # the snippet as printed, from the folder's parent
    assert scope["model"].config.num_hidden_layers == 3


def test_write_card_replaces_the_file_whole(runs, tmp_path):
    q = tmp_path / "q"
    shutil.copytree(runs["q"], q)
    (q / "README.md").write_text("stale")
    write_card(q)
    assert (q / "README.md").read_text() == render_card(q)
    assert [p.name for p in q.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_a_folder_that_cannot_keep_the_score_does_not_fail_eval(runs, tmp_path, monkeypatch):
    from llmshrink.jobs import card

    q = tmp_path / "q"
    shutil.copytree(runs["q"], q)

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(card, "atomic_file", refuse)
    assert main(["eval", str(q), "--data", str(runs["corpus"]), "--seqlen", "16", "--max-tokens", "64"]) == 0
    assert not (q / "llmshrink_evals.json").exists()


def test_a_check_puts_verified_usage_on_the_card(runs):
    from llmshrink.jobs.card import record_check

    report = {"path": str(runs["q"]), "kind": "gptq", "results": [
        {"consumer": "gptqmodel", "status": "ok", "max_logit_diff": 0.0123, "same_greedy": True, "why": ""},
        {"consumer": "transformers", "status": "failed", "max_logit_diff": None, "same_greedy": None,
         "why": "RuntimeError: expect K to be divisible by qGroupSize"},
        {"consumer": "llama.cpp", "status": "not applicable", "why": ""}]}
    card = ModelCard.load(record_check(runs["q"], report))
    text = card.text
    assert "In gptqmodel: verified by `llmshrink check` (max |logit difference| from llmshrink's 0.0123" in text
    assert 'GPTQModel.load("q")' in text and "not verified" not in text
    assert "In transformers: does not run this folder (`llmshrink check`: RuntimeError: expect K" in text
    assert json.loads((runs["q"] / "llmshrink_check.json").read_text())["kind"] == "gptq"
    # a check in another environment (vLLM's, without GPTQModel) adds its consumer and keeps the
    # results of those it could not try
    other = {"path": str(runs["q"]), "kind": "gptq", "results": [
        {"consumer": "gptqmodel", "status": "not installed", "why": "pip install gptqmodel"},
        {"consumer": "transformers", "status": "not installed", "why": "pip install gptqmodel optimum"},
        {"consumer": "vllm", "status": "ok", "max_logit_diff": 0.5, "same_greedy": True, "why": ""}]}
    text = ModelCard.load(record_check(runs["q"], other)).text
    assert "In gptqmodel: verified" in text and "In vllm: verified" in text and 'LLM(model="q")' in text
    assert "In transformers: does not run this folder" in text
    kept = {r["consumer"]: r["status"] for r in json.loads((runs["q"] / "llmshrink_check.json").read_text())["results"]}
    assert kept == {"gptqmodel": "ok", "transformers": "failed", "vllm": "ok"}
