import json
import shutil
import subprocess
import sys

import pytest

from llmshrink.cli import main
from llmshrink.errors import UserError

from .conftest import library_perplexity


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_one_line_error(rc, err, match):
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("llmshrink: error:")]
    assert len(lines) == 1 and match in lines[0], err
    assert "Traceback" not in err


def test_eval_json_on_tiny_model(capsys, tiny_model_dir, text_file):
    rc, out, _ = _run(capsys, "eval", str(tiny_model_dir), "--data", str(text_file), "--seqlen", "32", "--json")
    assert rc == 0
    rec = json.loads(out)
    for key in ("perplexity", "tokens", "seconds", "model", "data", "parameters", "size_on_disk"):
        assert key in rec
    ppl, tokens = library_perplexity(tiny_model_dir, text_file, 32)
    assert rec["perplexity"] == pytest.approx(ppl, rel=1e-9) and rec["tokens"] == tokens
    assert rec["model"] == str(tiny_model_dir) and rec["windows"] == tokens // 31


def test_eval_table_and_generate(capsys, tiny_model_dir, text_file):
    rc, out, _ = _run(capsys, "eval", str(tiny_model_dir), "--data", str(text_file), "--seqlen", "32")
    ppl, _ = library_perplexity(tiny_model_dir, text_file, 32)
    rows = dict(line.split(None, 1) for line in out.splitlines() if line.startswith(("perplexity", "size")))
    assert rc == 0 and rows["perplexity"].strip() == f"{ppl:.4f}" and "on disk" in rows["size"]
    rc, out, _ = _run(capsys, "generate", str(tiny_model_dir), "To be", "--max-new-tokens", "5",
                      "--template", "alpaca", "--show-prompt")
    assert rc == 0 and "### Instruction:\nTo be" in out


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["eval", "/no/such/model", "--data", "x.txt"], "no such file or folder"),
        (["eval", "tinyllama-1b"], "unknown model 'tinyllama-1b'"),
        (["eval", "{model}", "--data", "nocorpus"], "unknown corpus 'nocorpus'"),
        (["eval", "{model}", "--data", "{text}", "--seqlen", "4096"], "fewer than one window of 4096"),
        (["eval", "{model}", "--data", "{text}", "--seqlen", "0"], "--seqlen: must be a positive"),
        (["eval", "{model}", "--data", "{text}", "--stride", "900"], "--stride: 900 is larger than seqlen"),
        (["generate", "{model}", "hi", "--temperature", "0"], "--temperature: must be > 0"),
        (["eval", "{model}", "--data", "{text}", "--device", "cuda:7"], "CUDA"),
    ],
)
def test_bad_input_one_line_exit_2(capsys, tiny_model_dir, text_file, argv, match):
    if "--device" in argv and __import__("torch").cuda.is_available():
        pytest.skip("CUDA present")
    argv = [a.format(model=tiny_model_dir, text=text_file) for a in argv]
    rc, _, err = _run(capsys, *argv)
    _assert_one_line_error(rc, err, match)


def test_bad_files_one_line_exit_2(capsys, tiny_model_dir, text_file, tmp_path):
    broken = shutil.copytree(tiny_model_dir, tmp_path / "broken")
    shard = broken / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])
    rc, _, err = _run(capsys, "eval", str(broken), "--data", str(text_file))
    _assert_one_line_error(rc, err, "truncated")
    arch = shutil.copytree(tiny_model_dir, tmp_path / "arch")
    cfg = json.loads((arch / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (arch / "config.json").write_text(json.dumps(cfg))
    rc, _, err = _run(capsys, "eval", str(arch), "--data", str(text_file))
    _assert_one_line_error(rc, err, "unsupported architecture 'gpt2'")
    gguf = tmp_path / "cut.gguf"
    gguf.write_bytes(b"GGUF\x03\x00")
    rc, _, err = _run(capsys, "eval", str(gguf), "--data", str(text_file))
    _assert_one_line_error(rc, err, "not a readable GGUF file")


def test_debug_shows_the_traceback(tiny_model_dir):
    with pytest.raises(UserError):
        main(["--debug", "eval", "no-such-alias"])


def test_console_script_exit_status():
    from pathlib import Path

    beside = Path(sys.executable).parent / "llmshrink"  # the venv's scripts folder, on PATH or not
    exe = str(beside) if beside.exists() else shutil.which("llmshrink")
    assert exe, "the llmshrink console script is not installed: pip install -e ."
    proc = subprocess.run([exe, "eval", "no-such-alias"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("llmshrink: error: unknown model")
    proc = subprocess.run([sys.executable, "-c", "import llmshrink, sys; print('torch' in sys.modules)"],
                          capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"  # nothing heavy happens at import


def test_quantize_then_eval_and_generate(capsys, tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "q4"
    rc, stdout, _ = _run(capsys, "quantize", str(tiny_model_dir), "--out", str(out), "--bits", "4",
                         "--group-size", "16", "--calib", str(text_file), "--nsamples", "8", "--seqlen", "32",
                         "--blocks", "0:1")
    assert rc == 0 and "| 0 | 7 |" in stdout
    layers = [json.loads(line) for line in (out / "quantize_layers.jsonl").read_text().splitlines()]
    assert len(layers) == 7 and all(r["loss"] <= r["rtn_loss"] * 1.0001 for r in layers)
    assert json.loads((out / "config.json").read_text())["quantization_config"]["bits"] == 4
    rc, stdout, _ = _run(capsys, "eval", str(out), "--data", str(text_file), "--seqlen", "32", "--json")
    quantized, original = json.loads(stdout)["perplexity"], library_perplexity(tiny_model_dir, text_file, 32)[0]
    assert rc == 0 and quantized == pytest.approx(library_perplexity(out, text_file, 32)[0], rel=1e-6)
    assert quantized != original and abs(quantized / original - 1) < 0.25  # block 0 at 4 bits: a small change
    rc, stdout, _ = _run(capsys, "generate", str(out), "To be", "--max-new-tokens", "4")
    assert rc == 0 and stdout.strip()


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--bits", "5"], "--bits: must be 2, 3, 4 or 8, got 5"),
        (["--group-size", "0"], "--group-size: must be -1 (one group per row), auto or >= 1, got 0"),
        (["--method", "awq"], "argument --method: invalid choice: 'awq'"),
        (["--blocks", "0:9"], "outside the model's 2 blocks"),
        (["--blocks", "x:y"], "bad block range"),
        (["--blocks", "1:0"], "block range 1:0 is empty or reversed"),
        (["--seqlen", "4096"], "fewer than one window of 4096"),
        (["--nsamples", "0"], "--nsamples: must be a positive whole number, got 0"),
    ],
)
def test_quantize_bad_input(capsys, tiny_model_dir, text_file, tmp_path, extra, match):
    out = tmp_path / "q"
    rc, _, err = _run(capsys, "quantize", str(tiny_model_dir), "--out", str(out), "--calib", str(text_file),
                      "--group-size", "16", "--nsamples", "4", "--seqlen", "32", *extra)
    _assert_one_line_error(rc, err, match)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["corpus.txt"]  # nothing half-written


def test_quantize_out_in_missing_folder(capsys, tiny_model_dir, text_file, tmp_path):
    rc, _, err = _run(capsys, "quantize", str(tiny_model_dir), "--out", str(tmp_path / "a" / "b"),
                      "--calib", str(text_file))
    _assert_one_line_error(rc, err, "does not exist")


def test_overwrite_replaces_an_output_and_nothing_else(capsys, tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "q"
    argv = ["quantize", str(tiny_model_dir), "--out", str(out), "--calib", str(text_file), "--group-size", "16",
            "--nsamples", "4", "--seqlen", "32", "--blocks", "0:1"]
    assert _run(capsys, *argv)[0] == 0
    first = (out / "model.safetensors").read_bytes()
    rc, _, err = _run(capsys, *argv, "--bits", "2")
    _assert_one_line_error(rc, err, "exists: pass --overwrite")
    assert (out / "model.safetensors").read_bytes() == first
    assert _run(capsys, *argv, "--bits", "2", "--overwrite")[0] == 0
    assert (out / "model.safetensors").read_bytes() != first
    assert json.loads((out / "config.json").read_text())["quantization_config"]["bits"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "q"]  # no temporary folder left
