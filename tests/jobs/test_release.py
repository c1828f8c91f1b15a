"""A recipe's release stage: the checkpoint, its GGUF files and one card in one folder, checked in
the consumers installed here; a release from other settings is made again, not resumed."""

import json

import gguf
import pytest
from huggingface_hub import ModelCard

from llmshrink.errors import UserError
from llmshrink.jobs.recipe import load_recipe, parse_recipe, run_recipe
from tests.conftest import make_tiny_model, save_model_dir


@pytest.fixture(scope="module")
def src(tmp_path_factory, tokenizer):
    return save_model_dir(tmp_path_factory.mktemp("rel") / "src", make_tiny_model(len(tokenizer), layers=4), tokenizer)


def _recipe(src, out, corpus, ladder=("q4_0",), name="tiny-release"):
    return parse_recipe({"model": str(src), "out": str(out), "stages": [
        {"prune": {"criterion": "magnitude", "remove": 1, "data": str(corpus), "nsamples": 2, "seqlen": 16}},
        {"eval": {"data": str(corpus), "seqlen": 16}},
        {"release": {"name": name, "ladder": list(ladder), "eval_data": str(corpus), "eval_seqlen": 32,
                     "eval_max_tokens": 128, "mse": False,
                     "calib": {"data": str(corpus), "nsamples": 4, "seqlen": 16}}},
    ]})


def test_a_release_holds_the_checkpoint_its_gguf_files_and_one_card(src, tmp_path, text_file):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is in the test extras")
    summary = run_recipe(_recipe(src, tmp_path / "out", text_file))
    rel = tmp_path / "out" / "2-release"
    pruned = tmp_path / "out" / "0-prune"
    result = summary["stages"][2]["result"]
    assert result["name"] == "tiny-release" and set(result["gguf"]) == {"f16", "q4_0"}
    # the checkpoint: the pruned folder's files, as they are (hard links or copies)
    for f in ("model.safetensors", "config.json", "tokenizer.json", "llmshrink_prune.json", "llmshrink_evals.json"):
        assert (rel / f).read_bytes() == (pruned / f).read_bytes(), f
    assert json.loads((rel / "config.json").read_text())["num_hidden_layers"] == 3
    # the GGUF files, named after the release, scored through llama.cpp, with their own card
    q4 = rel / "gguf" / "tiny-release-Q4_0.gguf"
    reader = gguf.GGUFReader(q4)
    assert reader.fields["llama.block_count"].contents() == 3
    assert result["gguf"]["q4_0"]["perplexity"] > 1
    assert ModelCard.load(rel / "gguf" / "README.md").data.library_name == "gguf"
    # one card over both, with the recipe's score, the GGUF table and what the check ran
    card = ModelCard.load(rel / "README.md")
    assert card.data.model_name == "tiny-release" and {"depth-pruned", "gguf"} <= set(card.data.tags)
    text = card.text
    assert text.startswith("\n# tiny-release") or "# tiny-release\n" in text
    assert "## GGUF files" in text and "| Q4_0 |" in text and "llama-cli -m gguf/tiny-release-Q4_0.gguf" in text
    assert f"`{text_file}`" in text  # the eval stage's score is on the card
    check = json.loads((rel / "llmshrink_check.json").read_text())
    assert {r["consumer"]: r["status"] for r in check["results"]}["transformers"] == "ok"
    assert result["check"]["transformers"] == "ok"
    assert "In transformers: verified by `llmshrink check`" in text
    # the recipe that made it, kept beside it, reads back to the same stages
    assert "llmshrink run recipe.yaml" in text
    again = load_recipe(rel / "recipe.yaml")
    assert [s.settings for s in again.stages] == [s.settings for s in _recipe(src, tmp_path / "out", text_file).stages]


def test_a_release_of_other_settings_is_made_again(src, tmp_path, text_file, monkeypatch):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is in the test extras")
    monkeypatch.setattr("llmshrink.eval.check.check_output", _no_check)
    out = tmp_path / "out"
    rel = out / "2-release" / "gguf"
    first = _recipe(src, out, text_file, ladder=("q8_0",))
    run_recipe(first)
    assert (rel / "tiny-release-Q8_0.gguf").is_file()
    again = run_recipe(first)
    assert again["stages"][2]["status"] == "skipped (done)"
    run_recipe(_recipe(src, out, text_file, ladder=("q4_0",)))
    assert (rel / "tiny-release-Q4_0.gguf").is_file() and not (rel / "tiny-release-Q8_0.gguf").exists()
    assert set(json.loads((rel / "ladder.json").read_text())["rows"]) == {"f16", "q4_0"}


def _no_check(path, consumers=None):
    from llmshrink.eval.check import CheckReport

    return CheckReport(str(path), "plain", 0, [], [])


@pytest.mark.parametrize("stages, message", [
    ([{"release": {}}], r"stages\[0\]\.release publishes a model llmshrink made"),
    ([{"eval": {}}, {"release": {"ladder": ["q9_9"]}}], r"stages\[1\]\.release\.ladder: unknown GGUF type"),
    ([{"quantize": {}}, {"release": {"name": "a/b"}}], r"stages\[1\]\.release\.name: give a name without '/'"),
])
def test_release_settings_are_checked_before_anything_runs(tmp_path, stages, message):
    with pytest.raises(UserError, match=message):
        parse_recipe({"model": "smollm2-135m", "out": str(tmp_path / "o"), "stages": stages})


def test_a_folder_llmshrink_made_is_released_as_it_is(src, tmp_path, text_file, monkeypatch):
    monkeypatch.setattr("llmshrink.eval.check.check_output", _no_check)
    q = tmp_path / "q"
    from llmshrink.cli import main

    assert main(["-q", "quantize", str(src), "--out", str(q), "--method", "rtn", "--group-size", "16"]) == 0
    summary = run_recipe(parse_recipe({"model": str(q), "out": str(tmp_path / "out"), "stages": [
        {"release": {"name": "tiny-rtn", "ladder": ["q8_0"], "eval_data": "none"}}]}))
    rel = tmp_path / "out" / "0-release"
    assert summary["stages"][0]["result"]["name"] == "tiny-rtn"
    assert (rel / "model.safetensors").read_bytes() == (q / "model.safetensors").read_bytes()
    card = ModelCard.load(rel / "README.md")
    assert card.data.quantized_by == "llmshrink"
    # the GGUF rows say how a packed model's file was made; the card reproduces both steps
    rows = json.loads((rel / "gguf" / "ladder.json").read_text())["rows"]
    assert rows["q8_0"]["made_by"] == "llmshrink: 28 packed layers rounded again"
    assert "| Q8_0 | llmshrink: 28 packed layers rounded again |" in card.text
    assert f"llmshrink quantize {src}" in card.text and "llmshrink run recipe.yaml" in card.text
