"""Resuming a killed quantization (jobs.resume): the result is the uninterrupted run's, byte for byte."""

import json

import pytest

from llmshrink.data.calib import CalibConfig
from llmshrink.errors import UserError
from llmshrink.jobs import resume as resume_mod
from llmshrink.jobs.quantize import run_quantize
from llmshrink.models.load import load_model
from llmshrink.quant.config import QuantConfig
from llmshrink.quant.mix import MixConfig
from tests.conftest import TEXT, make_tiny_model, save_model_dir


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after the raise runs (not even except Exception)."""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    d = tmp_path_factory.mktemp("resume")
    model = save_model_dir(d / "model", make_tiny_model(len(tokenizer), layers=4), tokenizer)
    (d / "c.txt").write_text(TEXT * 8)
    return d, model, CalibConfig(data=str(d / "c.txt"), nsamples=4, seqlen=16, batch_size=2)


def _die_after_saving(monkeypatch, n):
    """Make the run die (as if SIGKILLed) right after its ``n``-th block is kept; returns the real save."""
    real_save = resume_mod.BlockState.save

    def save_then_die(self, k, *a):
        real_save(self, k, *a)
        if k + 1 == n:
            raise Killed

    monkeypatch.setattr(resume_mod.BlockState, "save", save_then_die)
    return real_save


def _files(out):
    """Every output file; the per-layer records and the run record without their timings; the
    command and the model card with the output's own name masked (runs into two folders compared)."""
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    files["README.md"] = files["README.md"].decode().replace(f"# {out.name}\n", "# OUT\n").replace(
        f"--out {out.name} ", "--out OUT ").replace(f" {out.name} ", " OUT ").replace(f" {out.name}`", " OUT`")
    layers = [json.loads(line) for line in files.pop("quantize_layers.jsonl").decode().splitlines()]
    files["layers"] = [{k: v for k, v in r.items() if k != "seconds"} for r in layers]
    run = json.loads(files.pop("llmshrink_quantize.json"))
    run["command"] = run["command"].replace(f"--out {out.name} ", "--out OUT ")
    files["run"] = {k: v for k, v in run.items() if k != "quantize_seconds"}
    return files


def _quantize(model, calib, out, cfg, **kw):
    return run_quantize(load_model(str(model), lazy_blocks=True), cfg, calib, out, **kw)


@pytest.mark.parametrize("cfg, kw, kill_after", [
    (QuantConfig(bits=4, group_size=16), {}, 2),
    (QuantConfig(bits=8, group_size=8, sym=False), {"blocks": "1:4", "lm_head": True}, 1),
    (QuantConfig(bits=8, group_size=8, sym=False), {"blocks": "1:4", "lm_head": True}, 3),  # during lm_head
    (QuantConfig(bits=4, group_size=16, method="rtn"), {}, 3),
    (QuantConfig(bits=4, group_size=16, method="gptaq"), {}, 2),  # the original model's stream is kept too
    (QuantConfig(bits=4, group_size=16, method="recon", recon_steps=4), {"blocks": "1:4"}, 1),
    (QuantConfig(bits=4, group_size=16), {"mix": MixConfig(target_bpw=3.5)}, 2),  # the widths are kept too
])
def test_a_killed_run_resumes_to_the_same_bytes(setup, tmp_path, monkeypatch, cfg, kw, kill_after):
    _, model, calib = setup
    _quantize(model, calib, tmp_path / "ref", cfg, **kw)
    real_save = _die_after_saving(monkeypatch, kill_after)
    out = tmp_path / "q"
    with pytest.raises(Killed):
        _quantize(model, calib, out, cfg, **kw)
    state = resume_mod.state_dir(out)
    assert not out.exists() and state.is_dir()
    assert sorted(p.name for p in state.glob("block-*")) == [f"block-{k:05d}.safetensors" for k in range(kill_after)]
    monkeypatch.setattr(resume_mod.BlockState, "save", real_save)
    solved = []
    monkeypatch.setattr("llmshrink.quant.driver._solve", _spy(solved))
    report, _ = _quantize(model, calib, out, cfg, **kw)
    n_blocks = len(range(4)[slice(*map(int, kw.get("blocks", "0:4").split(":")))])
    assert len({r.split(".")[2] for r in solved if r.startswith("model.layers.")}) == n_blocks - kill_after
    assert _files(out) == _files(tmp_path / "ref")
    assert not state.exists() and len(report.layers) == len(_files(out)["layers"])


def _spy(seen):
    from llmshrink.quant import driver

    real = driver._solve

    def solve(mod, full, *a):
        seen.append(full)
        return real(mod, full, *a)

    return solve


def test_a_resume_under_other_settings_is_refused_with_the_difference(setup, tmp_path, monkeypatch):
    _, model, calib = setup

    def die(self, k, *a):
        raise Killed

    monkeypatch.setattr(resume_mod.BlockState, "save", die)
    with pytest.raises(Killed):
        _quantize(model, calib, tmp_path / "q", QuantConfig(bits=4, group_size=16))
    monkeypatch.undo()
    with pytest.raises(UserError, match=r"other settings \(config.bits: 4 -> 2\).*--overwrite to start over"):
        _quantize(model, calib, tmp_path / "q", QuantConfig(bits=2, group_size=16))
    _quantize(model, calib, tmp_path / "q", QuantConfig(bits=2, group_size=16), overwrite=True)
    assert json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]["bits"] == 2
    assert not resume_mod.state_dir(tmp_path / "q").exists()


def test_a_damaged_resume_point_is_named(setup, tmp_path, monkeypatch):
    _, model, calib = setup
    real_save = resume_mod.BlockState.save

    def save_then_die(self, k, *a):
        real_save(self, k, *a)
        raise Killed

    monkeypatch.setattr(resume_mod.BlockState, "save", save_then_die)
    with pytest.raises(Killed):
        _quantize(model, calib, tmp_path / "q", QuantConfig(bits=4, group_size=16))
    monkeypatch.undo()
    (resume_mod.state_dir(tmp_path / "q") / "hidden.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(UserError, match="is damaged"):
        _quantize(model, calib, tmp_path / "q", QuantConfig(bits=4, group_size=16))


@pytest.mark.parametrize("gguf_type, kill_after", [("q4_0", 1), ("q5_1", 3), ("q8_0", 4)])
def test_a_killed_gguf_export_resumes_to_the_same_bytes(setup, tmp_path, monkeypatch, gguf_type, kill_after):
    from llmshrink.exporters.config import GGUFConfig
    from llmshrink.jobs.gguf_export import export_gguf

    _, model, calib = setup
    cfg = GGUFConfig(type=gguf_type)
    export_gguf(load_model(str(model)), cfg, tmp_path / "ref.gguf", calib=calib)
    real_save = _die_after_saving(monkeypatch, kill_after)
    out = tmp_path / "m.gguf"
    with pytest.raises(Killed):
        export_gguf(load_model(str(model)), cfg, out, calib=calib)
    assert not out.exists() and resume_mod.state_dir(out).is_dir()
    monkeypatch.setattr(resume_mod.BlockState, "save", real_save)
    rep = export_gguf(load_model(str(model)), cfg, out, calib=calib)
    assert out.read_bytes() == (tmp_path / "ref.gguf").read_bytes() and len(rep.solved) == 28
    assert not resume_mod.state_dir(out).exists()


def test_a_killed_iterative_pruning_does_not_score_its_finished_rounds_again(setup, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from llmshrink.jobs.prune import run_prune
    from llmshrink.pruning import scores
    from llmshrink.pruning.config import PruneConfig

    _, model, calib = setup
    cfg = PruneConfig(remove=2, iterative=True, data=calib.data, nsamples=4, seqlen=16)
    ref = run_prune(load_model(str(model)), cfg, tmp_path / "ref")
    real_save = resume_mod.RecordState.save

    def save_then_die(self, data):
        real_save(self, data)
        raise Killed

    monkeypatch.setattr(resume_mod.RecordState, "save", save_then_die)
    with pytest.raises(Killed):
        run_prune(load_model(str(model)), cfg, tmp_path / "p")
    monkeypatch.setattr(resume_mod.RecordState, "save", real_save)
    calls = []
    real_score = scores.score_blocks
    monkeypatch.setattr("llmshrink.jobs.prune.score_blocks", lambda *a, **k: calls.append(1) or real_score(*a, **k))
    rec = run_prune(load_model(str(model)), cfg, tmp_path / "p")
    untimed = lambda r: [{k: v for k, v in s.items() if k != "seconds"} for s in r["scores"]]  # noqa: E731
    assert len(calls) == 1 and rec["removed"] == ref["removed"] and untimed(rec) == untimed(ref)
    assert load_file(tmp_path / "p" / "model.safetensors").keys() == load_file(tmp_path / "ref" / "model.safetensors").keys()
    assert (tmp_path / "p" / "model.safetensors").read_bytes() == (tmp_path / "ref" / "model.safetensors").read_bytes()
    assert not resume_mod.state_dir(tmp_path / "p").exists()


def test_a_resume_point_of_other_weights_is_refused(setup, tmp_path, monkeypatch):
    import shutil

    _, model, calib = setup
    copy = shutil.copytree(model, tmp_path / "model")
    _die_after_saving(monkeypatch, 1)
    with pytest.raises(Killed):
        _quantize(copy, calib, tmp_path / "q", QuantConfig(bits=4, group_size=16))
    monkeypatch.undo()
    (copy / "model.safetensors").write_bytes((copy / "model.safetensors").read_bytes())  # rewritten: a new mtime
    with pytest.raises(UserError, match=r"other settings \(weights"):
        _quantize(copy, calib, tmp_path / "q", QuantConfig(bits=4, group_size=16))
