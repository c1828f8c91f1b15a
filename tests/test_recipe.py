import json

import pytest
import yaml

from llmshrink.cli import main
from llmshrink.errors import UserError
from llmshrink.jobs.recipe import load_recipe, parse_recipe, run_recipe
from llmshrink.tune import finetune as ft
from tests.conftest import library_perplexity


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    from tests.conftest import make_tiny_model, save_model_dir

    return save_model_dir(tmp_path_factory.mktemp("r") / "plain", make_tiny_model(len(tokenizer), layers=4),
                          tokenizer)


def _recipe(model_dir, out, corpus, steps=4):
    return {
        "model": str(model_dir), "out": str(out),
        "stages": [
            {"quantize": {"bits": 4, "group_size": 16, "blocks": "0:-2",
                          "calib": {"data": str(corpus), "nsamples": 4, "seqlen": 16}}},
            {"finetune": {"train": "last:2", "lm_head": True, "distill_from": "original", "data": str(corpus),
                          "seqlen": 16, "batch_size": 2, "steps": steps, "save_every": 2, "eval_data": "none", "ood_data": "none"}},
            {"eval": {"data": str(corpus), "seqlen": 16}},
        ],
    }


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["stages"].append({"quantise": {}}), r"unknown stage stages\[3\]\.quantise"),
    (lambda r: r["stages"][0]["quantize"].update(bitz=3), r"unknown field stages\[0\]\.quantize\.bitz"),
    (lambda r: r["stages"][0]["quantize"]["calib"].update(n=3), r"unknown field stages\[0\]\.quantize\.calib\.n"),
    (lambda r: r["stages"][0]["quantize"].update(bits=5), r"stages\[0\]\.quantize\.bits: must be 2, 3, 4 or 8, got 5"),
    (lambda r: r["stages"][1]["finetune"].update(train="all"), r"stages\[1\]\.finetune\.train: bad train spec"),
    (lambda r: r.pop("model"), "model is missing"),
    (lambda r: r.update(stages=[]), "non-empty list"),
    (lambda r: r["stages"].append({"eval": {}, "export": {}}), r"stages\[3\] must be one stage name"),
])
def test_recipe_errors_name_the_yaml_path(model_dir, tmp_path, text_file, edit, message):
    rec = _recipe(model_dir, tmp_path / "out", text_file)
    edit(rec)
    with pytest.raises(UserError, match=message):
        parse_recipe(rec)


def test_load_recipe_reads_yaml_and_refuses_bad_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_recipe(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_recipe(bad)


def test_shipped_recipes_parse():
    from pathlib import Path

    files = sorted(Path(__file__).parents[1].joinpath("recipes").glob("*.yaml"))
    assert len(files) >= 3
    for f in files:
        assert load_recipe(f).stages


def _die_after_first_checkpoint(monkeypatch):
    """Make the fine-tune stage stop (as if killed) right after writing its first checkpoint;
    returns the real ``save_checkpoint`` to put back."""
    real_save = ft.save_checkpoint

    def save_then_die(folder, *, step, **kw):
        real_save(folder, step=step, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(ft, "save_checkpoint", save_then_die)
    return real_save


def test_a_killed_run_resumes_where_it_stopped(model_dir, tmp_path, text_file, monkeypatch):
    rec = _recipe(model_dir, tmp_path / "out", text_file)
    real_save = _die_after_first_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(parse_recipe(rec))
    assert (tmp_path / "out" / "0-quantize" / ".llmshrink-stage.json").is_file()
    assert (tmp_path / "out" / ".1-finetune.checkpoint").is_dir() and not (tmp_path / "out" / "1-finetune").exists()
    monkeypatch.setattr(ft, "save_checkpoint", real_save)
    summary = run_recipe(parse_recipe(rec))
    assert [s["status"] for s in summary["stages"]] == ["skipped (done)", "ran", "ran"]
    done = json.loads((tmp_path / "out" / "1-finetune" / "llmshrink_finetune.json").read_text())
    assert done["steps"] == 4 and len(done["losses"]) == 4
    assert summary["model"] == str(tmp_path / "out" / "1-finetune")
    ev = json.loads((tmp_path / "out" / "2-eval" / "eval.json").read_text())
    assert ev["perplexity"] == pytest.approx(library_perplexity(tmp_path / "out" / "1-finetune", text_file,
                                                                ev["seqlen"])[0], rel=1e-6)
    # the same recipe again: nothing to do; a changed stage reruns it and every later stage
    again = run_recipe(parse_recipe(rec))
    assert [s["status"] for s in again["stages"]] == ["skipped (done)"] * 3
    changed = run_recipe(parse_recipe(_recipe(model_dir, tmp_path / "out", text_file, steps=2)))
    assert [s["status"] for s in changed["stages"]] == ["skipped (done)", "ran", "ran"]


def test_a_checkpoint_from_other_upstream_settings_is_not_resumed(model_dir, tmp_path, text_file, monkeypatch):
    real_save = _die_after_first_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(parse_recipe(_recipe(model_dir, tmp_path / "out", text_file)))
    monkeypatch.setattr(ft, "save_checkpoint", real_save)
    changed = _recipe(model_dir, tmp_path / "out", text_file)
    changed["stages"][0]["quantize"]["bits"] = 8  # the fine-tune's input changes, its own settings do not

    def must_not_resume(*a, **kw):
        raise AssertionError("resumed a checkpoint trained on another input model")

    monkeypatch.setattr(ft, "load_checkpoint", must_not_resume)
    summary = run_recipe(parse_recipe(changed))
    assert [s["status"] for s in summary["stages"]] == ["ran", "ran", "ran"]
    done = json.loads((tmp_path / "out" / "1-finetune" / "llmshrink_finetune.json").read_text())
    assert len(done["losses"]) == 4 and done["steps"] == 4


def test_cli_run_prints_the_stage_table(model_dir, tmp_path, text_file, capsys):
    rec = _recipe(model_dir, tmp_path / "out", text_file, steps=2)
    rec["stages"] = rec["stages"][:1] + rec["stages"][2:]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(rec))
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| quantize |" in out and "| eval |" in out and "perplexity" in out
    rec["stages"][0]["quantize"]["group_size"] = 0
    path.write_text(yaml.safe_dump(rec))
    assert main(["run", str(path)]) == 2
    assert "stages[0].quantize" in capsys.readouterr().err


def test_a_recipe_into_a_new_folder_holding_its_model_makes_nothing(tmp_path):
    # the out folder's parent does not exist yet: the cycle is still refused before anything is made
    recipe = parse_recipe({"model": str(tmp_path / "new" / "run" / "0-quantize"), "out": str(tmp_path / "new" / "run"),
                           "stages": [{"eval": {}}]})
    with pytest.raises(UserError, match="holds the input"):
        run_recipe(recipe)
    assert list(tmp_path.iterdir()) == []
