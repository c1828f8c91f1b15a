import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from llmshrink.cli import main
from tests.conftest import library_perplexity


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def four_block_dir(tmp_path_factory, tokenizer):
    from tests.conftest import make_tiny_model, save_model_dir

    return save_model_dir(tmp_path_factory.mktemp("tiny4"), make_tiny_model(len(tokenizer), layers=4), tokenizer)


def _data(text_file):
    return ["--data", text_file, "--nsamples", 4, "--seqlen", 16, "--batch-size", 2]


@pytest.mark.parametrize("criterion", ["ppl", "taylor", "magnitude", "angular"])
def test_score_only_writes_json_and_png(capsys, four_block_dir, text_file, tmp_path, criterion):
    out = tmp_path / "scores"
    rc, stdout, _ = _run(capsys, "prune", four_block_dir, "--out", out, "--score-only", "--criterion", criterion,
                         *_data(text_file))
    assert rc == 0 and f"| block | {criterion} score |" in stdout
    rec = json.loads((out / "block_scores.json").read_text())
    assert rec["scores"][0]["criterion"] == criterion and len(rec["scores"][0]["scores"]) == 4
    assert (out / "block_scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.safetensors"))


def test_prune_removes_the_lowest_scored_blocks_and_saves_a_plain_model(capsys, four_block_dir, text_file,
                                                                        tmp_path):
    out = tmp_path / "pruned"
    rc, stdout, _ = _run(capsys, "prune", four_block_dir, "--out", out, "--criterion", "ppl", "--remove", 2,
                         "--keep-first", 0, "--keep-last", 0, *_data(text_file))
    assert rc == 0, stdout
    rec = json.loads((out / "llmshrink_prune.json").read_text())
    scores = rec["scores"][0]["scores"]
    assert rec["removed"] == sorted(sorted(range(4), key=lambda i: (scores[i], -i))[:2])
    assert rec["blocks_after"] == 2 and rec["parameters_after"] < rec["parameters_before"]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 2
    original = AutoModelForCausalLM.from_pretrained(four_block_dir)
    assert model.config.dtype == torch.bfloat16  # a release folder: 16-bit (the float32 source's range)
    for new, old in enumerate(rec["kept"]):
        torch.testing.assert_close(model.model.layers[new].mlp.down_proj.weight,
                                   original.model.layers[old].mlp.down_proj.weight.bfloat16(), rtol=0, atol=0)
    # The pruned folder is a model like any other: evaluate it, quantize it.
    rc, stdout, _ = _run(capsys, "eval", out, "--data", text_file, "--seqlen", 16, "--json")
    assert rc == 0 and json.loads(stdout)["perplexity"] == pytest.approx(library_perplexity(out, text_file, 16)[0],
                                                                         rel=1e-9)
    rc, _, err = _run(capsys, "quantize", out, "--out", tmp_path / "q", "--method", "rtn", "--group-size", 16)
    assert rc == 0, err
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2 and len(cfg["quantization_config"]["modules_in_block_to_quantize"][0]) == 14


def test_iterative_removal_keeps_first_and_last(capsys, four_block_dir, text_file, tmp_path):
    out = tmp_path / "it"
    rc, _, err = _run(capsys, "prune", four_block_dir, "--out", out, "--criterion", "angular", "--ratio", 0.5,
                      "--iterative", *_data(text_file))
    assert rc == 0, err
    rec = json.loads((out / "llmshrink_prune.json").read_text())
    assert rec["removed"] == [1, 2] and len(rec["scores"]) == 2 and len(rec["scores"][1]["scores"]) == 3


@pytest.mark.parametrize("loss", ["lm", "kd"])
def test_lora_healing_changes_the_kept_weights_and_leaves_no_adapters(capsys, four_block_dir, text_file,
                                                                     tmp_path, loss):
    common = [four_block_dir, "--criterion", "magnitude", "--remove", 1, *_data(text_file)]
    assert _run(capsys, "prune", *common, "--out", tmp_path / "plain")[0] == 0
    rc, stdout, err = _run(capsys, "prune", *common, "--out", tmp_path / "healed", "--heal", "lora",
                           "--heal-steps", 4, "--heal-data", text_file, "--heal-seqlen", 16,
                           "--heal-batch-size", 2, "--heal-loss", loss, "--heal-lr", 1e-2)
    assert rc == 0, err
    assert "healed: 4 steps" in stdout
    plain = load_file(tmp_path / "plain" / "model.safetensors")
    healed = load_file(tmp_path / "healed" / "model.safetensors")
    assert set(plain) == set(healed) and not any("lora" in k for k in healed)
    changed = [k for k in plain if not torch.equal(plain[k], healed[k])]
    assert changed and all(k.endswith("proj.weight") for k in changed)
    rec = json.loads((tmp_path / "healed" / "llmshrink_prune.json").read_text())
    assert rec["heal"]["steps"] == 4 and rec["heal"]["config"]["loss"] == loss


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--remove", "4"], "cannot remove 4 of the model's 4 blocks"),
        (["--remove", "3"], "only 2 of 4 may go"),
        (["--ratio", "1.5"], "--ratio: must be in (0, 1), got 1.5"),
        (["--ratio", "0.05"], "rounds to 0 blocks"),
        (["--criterion", "cosine", "--remove", "1"], "argument --criterion: invalid choice: 'cosine'"),
        ([], "say how many blocks to remove"),
        (["--score-only", "--heal", "lora"], "nothing to --heal"),
        (["--remove", "1", "--heal", "lora", "--heal-steps", "0"], "--heal-steps: must be a positive whole number, got 0"),
    ],
)
def test_prune_bad_input_one_line_exit_2(capsys, four_block_dir, text_file, tmp_path, extra, match):
    out = tmp_path / "o"
    rc, _, err = _run(capsys, "prune", four_block_dir, "--out", out, *_data(text_file), *extra)
    lines = [ln for ln in err.splitlines() if ln.startswith("llmshrink: error:")]
    assert rc == 2 and len(lines) == 1 and match in lines[0], err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".o-")]


def test_prune_out_in_missing_folder(capsys, four_block_dir, text_file, tmp_path):
    rc, _, err = _run(capsys, "prune", four_block_dir, "--out", tmp_path / "no" / "o", "--remove", "1",
                      *_data(text_file))
    assert rc == 2 and "does not exist" in err
