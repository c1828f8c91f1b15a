"""The bad-input corpus: what a new user gets wrong, each case one command line.

Every case must end with exit status 2, exactly one error line on stderr that names the fix,
no traceback, and nothing changed on disk: the whole workspace (the model folders given as
input, the existing outputs, the corpora) is hashed before and after each case.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmshrink.cli import main

from .conftest import TEXT


def _edit_weights(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _copy(src: Path, dst: Path, edit=None) -> Path:
    shutil.copytree(src, dst)
    if edit is not None:
        edit(dst)
    return dst


def _nan(t):
    t["model.layers.1.mlp.down_proj.weight"][0, 0] = float("nan")


def _bad_shape(t):
    t["model.layers.0.self_attn.q_proj.weight"] = t["model.layers.0.self_attn.q_proj.weight"][:, :-4].clone()


def _int_weights(t):
    t["model.layers.0.mlp.up_proj.weight"] = t["model.layers.0.mlp.up_proj.weight"].to(torch.int32)


def _gptq_bad_shape(t):
    name = next(k for k in t if k.endswith("qweight"))
    t[name] = t[name][:-1].clone()


def _config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_model_dir) -> Path:
    """A user's workspace: a model, broken copies of it, corpora, existing outputs, recipes."""
    w = tmp_path_factory.mktemp("ws")
    model = _copy(tiny_model_dir, w / "model")
    (w / "corpus.txt").write_text(TEXT * 8)
    (w / "empty.txt").write_text("")
    (w / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 50)
    (w / "bad.jsonl").write_text('{"text": "fine"}\n{not json\n')
    (w / "notext.jsonl").write_text('{"title": "no text field"}\n')
    (w / "emptydir").mkdir()
    (w / "notes").mkdir()
    (w / "notes" / "notes.txt").write_text("a user's notes\n")
    (w / "existing.gguf").write_bytes(b"an earlier export\n")
    (w / "random.gguf").write_bytes(os.urandom(4096))
    (w / "empty.gguf").write_bytes(b"")
    (w / "cut.gguf").write_bytes(b"GGUF\x03\x00")
    (w / "weights.bin").write_bytes(os.urandom(64))
    (w / "ro").mkdir()
    _copy(model, w / "noconfig", lambda d: (d / "config.json").unlink())
    _copy(model, w / "badjson", lambda d: (d / "config.json").write_text("{model_type: llama"))
    _copy(model, w / "gpt2", lambda d: _config(d, model_type="gpt2"))
    _copy(model, w / "noweights", lambda d: (d / "model.safetensors").unlink())
    _copy(model, w / "pickled", lambda d: ((d / "model.safetensors").rename(d / "pytorch_model.bin")))
    _copy(model, w / "truncated", lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:1000]))
    _copy(model, w / "garbage", lambda d: (d / "model.safetensors").write_bytes(os.urandom(2048)))
    _copy(model, w / "badheader", lambda d: (d / "model.safetensors").write_bytes(
        (40).to_bytes(8, "little") + b"{" * 40 + b"\0" * 64))
    _copy(model, w / "notokenizer", lambda d: [p.unlink() for p in d.glob("*token*")])
    _copy(model, w / "nan", lambda d: _edit_weights(d, _nan))
    _copy(model, w / "badshape", lambda d: _edit_weights(d, _bad_shape))
    _copy(model, w / "intweights", lambda d: _edit_weights(d, _int_weights))
    _copy(model, w / "awq", lambda d: _config(d, quantization_config={"quant_method": "awq", "bits": 4}))
    assert main(["-q", "quantize", str(model), "--out", str(w / "gptq"), "--calib", str(w / "corpus.txt"),
                 "--group-size", "16", "--nsamples", "4", "--seqlen", "32"]) == 0
    _copy(w / "gptq", w / "gptq-badshape", lambda d: _edit_weights(d, _gptq_bad_shape))
    _copy(w / "gptq", w / "gptq-bits", lambda d: _config(d, quantization_config={"bits": 5}))
    recipes = {
        "missing-model": {"out": "x", "stages": [{"eval": {}}]},
        "not-mapping": ["quantize"],
        "unknown-stage": {"model": str(model), "out": str(w / "r1"), "stages": [{"quantise": {}}]},
        "unknown-field": {"model": str(model), "out": str(w / "r2"), "stages": [{"quantize": {"bitz": 3}}]},
        "bad-setting": {"model": str(model), "out": str(w / "r3"), "stages": [{"quantize": {"bits": 5}}]},
        "no-stages": {"model": str(model), "out": str(w / "r4"), "stages": []},
        "into-model": {"model": str(model), "out": str(model / "runs"), "stages": [{"eval": {}}]},
        "cycle": {"model": str(w / "cyc" / "0-quantize"), "out": str(w / "cyc"), "stages": [{"eval": {}}]},
        "over-notes": {"model": str(model), "out": str(w / "notes"), "stages": [{"eval": {"data": str(w / "corpus.txt")}}]},
        "bad-corpus": {"model": str(model), "out": str(w / "r5"), "stages": [{"eval": {"data": "nocorpus"}}]},
        "missing-model-path": {"model": str(w / "nowhere"), "out": str(w / "r6"), "stages": [{"eval": {}}]},
    }
    (w / "cyc" / "0-quantize").mkdir(parents=True)
    for name, data in recipes.items():
        (w / f"{name}.yaml").write_text(json.dumps(data))
    (w / "invalid.yaml").write_text("model: m\nout: o\nstages:\n  - quantize: {bits: 4\n")
    (w / "tabs.yaml").write_text("model: m\n\tout: o\n")
    return w


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


M, T = "{ws}/model", "{ws}/corpus.txt"
Q = ["quantize", M, "--calib", T, "--group-size", "16", "--nsamples", "4", "--seqlen", "32"]
E = ["eval", "--data", T, "--seqlen", "32"]

CASES = {
    # outputs: never destroy anything
    "quantize over an existing folder": ([*Q, "--out", "{ws}/notes"], "exists: pass --overwrite"),
    "quantize over the input model": ([*Q, "--out", M], "is the input"),
    "quantize into the input model": ([*Q, "--out", "{ws}/model/q4"], "is inside the input"),
    "quantize over a folder holding the input": ([*Q, "--out", "{ws}"], "holds the input"),
    "quantize over a file": ([*Q, "--out", "{ws}/corpus.txt"], "is a file: give a folder"),
    "quantize into a missing folder": ([*Q, "--out", "{ws}/no/such/q4"], "does not exist"),
    "quantize into an unwritable folder": ([*Q, "--out", "{ws}/ro/q4"], "cannot be written"),
    "export over an existing file": (["export", M, "--type", "f16", "--out", "{ws}/existing.gguf"],
                                     "exists: pass --overwrite"),
    "export to a folder": (["export", M, "--type", "f16", "--out", "{ws}/notes"], "is a folder: give a file name"),
    "export into the input model": (["export", M, "--type", "f16", "--out", "{ws}/model/m.gguf"], "inside the input"),
    "export hf-gptq over a folder": (["export", "{ws}/gptq", "--format", "hf-gptq", "--out", "{ws}/notes"],
                                     "exists: pass --overwrite"),
    "ladder into a folder of other files": (["export", M, "--ladder", "f16", "--out", "{ws}/notes"],
                                            "is not a ladder folder"),
    "prune over an existing folder": (["prune", M, "--remove", "1", "--out", "{ws}/notes"], "exists"),
    "prune over the input": (["prune", M, "--remove", "1", "--out", M], "is the input"),
    "finetune over an existing folder": (["finetune", M, "--data", T, "--out", "{ws}/notes"], "exists"),
    "finetune --resume without a checkpoint": (["finetune", M, "--data", T, "--out", "{ws}/t", "--resume"],
                                               "no checkpoint"),
    "eval --out is a file": ([*E, M, "--out", "{ws}/corpus.txt"], "is a file"),
    "bench --out is a file": (["bench", M, "--out", "{ws}/corpus.txt"], "is a file"),
    "recipe into the model folder": (["run", "{ws}/into-model.yaml"], "inside the input"),
    "recipe cycling its output into its input": (["run", "{ws}/cycle.yaml"], "holds the input"),
    "recipe over a folder of other files": (["run", "{ws}/over-notes.yaml"], "not a recipe's outputs"),
    # settings
    "bits 5": ([*Q, "--out", "{ws}/q", "--bits", "5"], "--bits: must be 2, 3, 4 or 8"),
    "group size 0": ([*Q, "--out", "{ws}/q", "--group-size", "0"], "--group-size: must be -1"),
    "unknown method": ([*Q, "--out", "{ws}/q", "--method", "awq"], "invalid choice: 'awq'"),
    "nsamples 0": ([*Q, "--out", "{ws}/q", "--nsamples", "0"], "--nsamples: must be a positive"),
    "negative damping": ([*Q, "--out", "{ws}/q", "--damp", "-1"], "--damp"),
    "reversed block range": ([*Q, "--out", "{ws}/q", "--blocks", "3:1"], "reversed"),
    "empty block range": ([*Q, "--out", "{ws}/q", "--blocks", "1:1"], "is empty"),
    "block range past the model": ([*Q, "--out", "{ws}/q", "--blocks", "0:9"], "outside the model's 2 blocks"),
    "block range not numbers": ([*Q, "--out", "{ws}/q", "--blocks", "x:y"], "bad block range"),
    "calibration window too long": ([*Q, "--out", "{ws}/q", "--seqlen", "4096"], "fewer than one window"),
    "unknown GGUF type": (["export", M, "--type", "q9_9", "--out", "{ws}/m.gguf"], "--type"),
    "unknown ladder type": (["export", M, "--ladder", "q9_9", "--out", "{ws}/l"], "unknown GGUF type 'q9_9'"),
    "ladder as hf-gptq": (["export", M, "--ladder", "f16", "--format", "hf-gptq", "--out", "{ws}/l"],
                          "--ladder writes GGUF files"),
    "hf-gptq of a plain model": (["export", M, "--format", "hf-gptq", "--out", "{ws}/h"], "no quantized layers"),
    "prune too many blocks": (["prune", M, "--remove", "5", "--data", T, "--out", "{ws}/p"], "remove"),
    "score-only with heal": (["prune", M, "--score-only", "--heal", "lora", "--out", "{ws}/p"], "--score-only"),
    "finetune past the model": (["finetune", M, "--data", T, "--train", "last:9", "--out", "{ws}/t"], "last:9"),
    "temperature 0": (["generate", M, "hi", "--temperature", "0"], "--temperature: must be > 0"),
    "empty instruction": (["generate", M, "  "], "the instruction is empty"),
    "cuda without a GPU": ([*E, M, "--device", "cuda:7"], "CUDA"),
    "no perplexity, no tasks": ([*E, M, "--no-perplexity"], "leaves nothing to do"),
    "unknown task": ([*E, M, "--tasks", "nosuchtask"], "unknown task 'nosuchtask'"),
    "task file missing": ([*E, M, "--tasks", "cloze4={ws}/none.jsonl"], "does not exist"),
    "stride past seqlen": ([*E, M, "--stride", "900"], "--stride: 900 is larger than seqlen"),
    # corpora
    "unknown corpus": ([*Q, "--out", "{ws}/q", "--calib", "nocorpus"], "unknown corpus 'nocorpus'"),
    "unknown split": ([*Q, "--out", "{ws}/q", "--calib", "shakespeare:train"], "has no split 'train'"),
    "missing corpus file": ([*E, M, "--data", "{ws}/none.txt"], "no such file or folder"),
    "empty corpus file": ([*E, M, "--data", "{ws}/empty.txt"], "is empty"),
    "corpus not UTF-8": ([*E, M, "--data", "{ws}/latin1.txt"], "not UTF-8"),
    "corpus folder without text": ([*E, M, "--data", "{ws}/emptydir"], "holds no .txt files"),
    "corpus JSONL with a bad line": ([*E, M, "--data", "{ws}/bad.jsonl"], "bad.jsonl:2: not a valid JSON object"),
    "corpus JSONL without text": ([*E, M, "--data", "{ws}/notext.jsonl"], "no 'text'"),
    "bad hf corpus": ([*E, M, "--data", "hf:"], "write hf:NAME"),
    # models
    "missing model folder": ([*E, "{ws}/nowhere"], "no such file or folder"),
    "unknown alias": ([*E, "tinyllama-1b"], "unknown model 'tinyllama-1b'"),
    "folder without config.json": ([*E, "{ws}/noconfig"], "has no config.json"),
    "config.json not JSON": ([*E, "{ws}/badjson"], "is not valid JSON"),
    "unsupported architecture": ([*E, "{ws}/gpt2"], "unsupported architecture 'gpt2'"),
    "no weights": ([*E, "{ws}/noweights"], "holds no *.safetensors weights"),
    "pickled weights": ([*E, "{ws}/pickled"], "pickled PyTorch weights"),
    "truncated safetensors": ([*E, "{ws}/truncated"], "truncated"),
    "random bytes as safetensors": ([*E, "{ws}/garbage"], "not a readable safetensors file"),
    "damaged safetensors header": ([*E, "{ws}/badheader"], "not a readable safetensors file"),
    "tokenizer missing": ([*E, "{ws}/notokenizer"], "has no tokenizer"),
    "a weight of the wrong shape": ([*E, "{ws}/badshape"], "q_proj"),
    "a weight of the wrong dtype": ([*E, "{ws}/intweights"], "up_proj"),
    "unknown quantization method": ([*E, "{ws}/awq"], "'awq'-quantized checkpoint"),
    "GPTQ qweight of the wrong shape": ([*E, "{ws}/gptq-badshape"], "qweight"),
    "GPTQ checkpoint with 5 bits": ([*E, "{ws}/gptq-bits"], "bits"),
    "quantize a quantized checkpoint": (["quantize", "{ws}/gptq", "--calib", T, "--out", "{ws}/q"],
                                        "already gptq-quantized"),
    "random bytes as GGUF": ([*E, "{ws}/random.gguf"], "not a GGUF file"),
    "empty GGUF": ([*E, "{ws}/empty.gguf"], "not a GGUF file"),
    "truncated GGUF header": ([*E, "{ws}/cut.gguf"], "not a readable GGUF file"),
    "a file that is not a model": ([*E, "{ws}/weights.bin"], "not a .gguf model"),
    "NaN weights: eval": ([*E, "{ws}/nan"], "non-finite weights"),
    "NaN weights: generate": (["generate", "{ws}/nan", "hi"], "non-finite weights"),
    "NaN weights: bench": (["bench", "{ws}/nan"], "non-finite weights"),
    "NaN weights: export": (["export", "{ws}/nan", "--type", "f16", "--out", "{ws}/n.gguf"], "non-finite weights"),
    "NaN weights: prune": (["prune", "{ws}/nan", "--remove", "1", "--data", T, "--out", "{ws}/p"], "non-finite"),
    "NaN weights: finetune": (["finetune", "{ws}/nan", "--data", T, "--out", "{ws}/t"], "non-finite weights"),
    "NaN weights: quantize": ([*Q[:1], "{ws}/nan", *Q[2:], "--out", "{ws}/q"], "non-finite weights"),
    "teacher missing": (["finetune", M, "--data", T, "--distill-from", "{ws}/nowhere", "--out", "{ws}/t"],
                        "no such file or folder"),
    # recipes
    "recipe file missing": (["run", "{ws}/none.yaml"], "does not exist"),
    "recipe not valid YAML": (["run", "{ws}/invalid.yaml"], "line 5, column"),
    "recipe with a tab": (["run", "{ws}/tabs.yaml"], "line 2, column 1"),
    "recipe not a mapping": (["run", "{ws}/not-mapping.yaml"], "a recipe is a mapping"),
    "recipe without a model": (["run", "{ws}/missing-model.yaml"], "model is missing"),
    "recipe with an unknown stage": (["run", "{ws}/unknown-stage.yaml"], "unknown stage"),
    "recipe with an unknown field": (["run", "{ws}/unknown-field.yaml"], "unknown field"),
    "recipe with a bad setting": (["run", "{ws}/bad-setting.yaml"], "bits: must be 2, 3, 4 or 8"),
    "recipe without stages": (["run", "{ws}/no-stages.yaml"], "stages must be a non-empty list"),
    "recipe with an unknown corpus": (["run", "{ws}/bad-corpus.yaml"], "unknown corpus 'nocorpus'"),
    "recipe with a missing model": (["run", "{ws}/missing-model-path.yaml"], "no such file or folder"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, ws, capsys, monkeypatch):
    argv, match = CASES[case]
    argv = [a.replace("{ws}", str(ws)) for a in argv]
    if "cuda" in " ".join(argv) and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    real_access = os.access
    # root may write anywhere: the unwritable folder is made so for the check itself
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ws / "ro" and mode & os.W_OK
                        else real_access(p, mode, **kw))
    before = _digest(ws)
    rc = main(argv)
    _, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.startswith("llmshrink: error:")]
    assert rc == 2, err
    if os.environ.get("SHOW_ERRORS"):
        print(f"\n{case}: {lines}", file=__import__("sys").__stderr__)
    assert len(lines) == 1 and match in lines[0], err
    assert "Traceback" not in err
    assert _digest(ws) == before, "the workspace changed"


def test_the_corpus_is_large():
    assert len(CASES) >= 60
