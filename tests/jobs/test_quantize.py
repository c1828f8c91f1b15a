"""The quantize job: what lands on disk, and how it reads back (models.gptq_checkpoint)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmshrink.data.calib import CalibConfig
from llmshrink.errors import UserError
from llmshrink.jobs.quantize import QuantizeScope, run_quantize
from llmshrink.models.gptq_checkpoint import load_gptq
from llmshrink.models.load import load_model
from llmshrink.quant.config import QuantConfig
from llmshrink.quant.mix import MixConfig
from llmshrink.quant.qlinear import QuantLinear


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, tiny_model_dir):
    from tests.conftest import TEXT

    d = tmp_path_factory.mktemp("qjob")
    (d / "c.txt").write_text(TEXT * 8)
    calib = CalibConfig(data=str(d / "c.txt"), nsamples=4, seqlen=16, batch_size=2)
    cfg = QuantConfig(bits=4, group_size=16)
    report, out = run_quantize(load_model(str(tiny_model_dir), lazy_blocks=True), cfg, calib, d / "q",
                               blocks="1:2")
    return report, out, cfg, calib


def test_the_checkpoint_says_what_was_done(quantized, tiny_model_dir):
    report, out, cfg, calib = quantized
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["checkpoint_format"] == "gptq"
    assert {k: qc[k] for k in report.scheme} == report.scheme
    assert (qc["bits"], qc["group_size"], qc["sym"], qc["desc_act"]) == (4, 16, True, True)
    run = json.loads((out / "llmshrink_quantize.json").read_text())
    assert run["config"] == cfg.to_dict() and run["blocks"] == [1, 2] and run["lm_head"] is False
    assert run["calibration"]["nsamples"] == calib.nsamples
    layers = [json.loads(line) for line in (out / "quantize_layers.jsonl").read_text().splitlines()]
    assert [r["name"] for r in layers] == [r.name for r in report.layers] and len(layers) == 7
    assert all(r["name"].startswith("model.layers.1.") for r in layers)
    # blocks outside 1:2 are saved as they were, in float16 (a float32 source's release dtype beside GPTQ layers)
    state, orig = load_file(out / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    packed = {k.removesuffix(".qweight") for k in state if k.endswith(".qweight")}
    assert packed == {r["name"] for r in layers}
    for k, v in orig.items():
        if not k.startswith("model.layers.1.") or "norm" in k:
            assert state[k].dtype == torch.float16 and torch.equal(state[k], v.half()), k


def test_load_gptq_puts_packed_layers_exactly_where_the_checkpoint_has_them(quantized):
    _, out, _, _ = quantized
    config = json.loads((out / "config.json").read_text())
    model = load_gptq(out, config, torch.float32, trust_remote_code=False)
    packed = {n for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    state = load_file(out / "model.safetensors")
    assert packed == {k.removesuffix(".qweight") for k in state if k.endswith(".qweight")}
    layer = model.get_submodule(sorted(packed)[0])
    assert torch.equal(layer.qweight, state[f"{sorted(packed)[0]}.qweight"])


def test_load_gptq_refuses_other_formats_and_incomplete_checkpoints(quantized, tmp_path):
    _, out, _, _ = quantized
    config = json.loads((out / "config.json").read_text())
    v2 = {**config, "quantization_config": {**config["quantization_config"], "checkpoint_format": "gptq_v2"}}
    with pytest.raises(UserError, match="checkpoint_format 'gptq_v2' is not supported"):
        load_gptq(out, v2, torch.float32, trust_remote_code=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in out.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    state = load_file(out / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.scales"]
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(UserError, match="up_proj has packed weights but no scales: the checkpoint is incomplete"):
        load_gptq(broken, config, torch.float32, trust_remote_code=False)
    state = load_file(out / "model.safetensors")
    del state["model.norm.weight"]
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(UserError, match=r"weights do not match the model \(missing \['model.norm.weight'\]"):
        load_gptq(broken, config, torch.float32, trust_remote_code=False)


def test_scope_validation():
    with pytest.raises(UserError, match="blocks: must be a range A:B written as a string"):
        QuantizeScope(blocks=3)


def test_finished_blocks_leave_memory_and_are_saved_from_their_files(tiny_model_dir, tmp_path, monkeypatch):
    """Blocks read one at a time: each finished block's packed tensors are freed (left on meta)
    once its resume file is written, and the checkpoint copies them from there."""
    import llmshrink.jobs.quantize as job
    from tests.conftest import TEXT

    seen = {}

    def spy(model, tokenizer, report, out, **kw):
        seen["meta"] = [m.qweight.is_meta for m in model.modules() if isinstance(m, QuantLinear)]
        seen["spilled"] = sorted(kw["spilled"])
        return save(model, tokenizer, report, out, **kw)

    save = job.save_quantized
    monkeypatch.setattr(job, "save_quantized", spy)
    (tmp_path / "c.txt").write_text(TEXT * 8)
    calib = CalibConfig(data=str(tmp_path / "c.txt"), nsamples=4, seqlen=16, batch_size=2)
    report, out = run_quantize(load_model(str(tiny_model_dir), lazy_blocks=True), QuantConfig(bits=4, group_size=16),
                               calib, tmp_path / "q")
    assert seen["meta"] and all(seen["meta"])
    names = [r.name for r in report.layers]
    assert seen["spilled"] == sorted(f"{n}.{leaf}" for n in names for leaf in QuantLinear.PACKED)
    state = load_file(out / "model.safetensors")
    assert all(f"{n}.qweight" in state for n in names)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, tokenizer):
    from tests.conftest import TEXT, make_tiny_model, save_model_dir

    d = tmp_path_factory.mktemp("mixed")
    src = save_model_dir(d / "model", make_tiny_model(len(tokenizer), layers=3, hidden=64, intermediate=128),
                         tokenizer)
    (d / "c.txt").write_text(TEXT * 8)
    calib = CalibConfig(data=str(d / "c.txt"), nsamples=8, seqlen=16, batch_size=4)
    lm = load_model(str(src))  # whole in memory: compared with the checkpoint below
    report, out = run_quantize(lm, QuantConfig(bits=4, group_size=32), calib, d / "q",
                               mix=MixConfig(target_bpw=3.5))
    return src, lm, report, out


def _stored_bpw(state: dict) -> float:
    names = [k.removesuffix(".qweight") for k in state if k.endswith(".qweight")]
    bits = sum(8 * state[f"{n}.{p}"].numel() * state[f"{n}.{p}"].element_size() for n in names
               for p in ("qweight", "qzeros", "scales"))
    return bits / sum(state[f"{n}.g_idx"].numel() * state[f"{n}.scales"].shape[1] for n in names)


def test_target_bpw_packs_each_layer_at_its_width_within_the_budget(mixed):
    _, lm, report, out = mixed
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    run = json.loads((out / "llmshrink_quantize.json").read_text())
    layers = {r["name"]: r["bits"] for r in map(json.loads, (out / "quantize_layers.jsonl").read_text().splitlines())}
    assert len(set(layers.values())) >= 2 and run["mix"]["target_bpw"] == 3.5
    assert {n: report.layer_config(n).bits for n in layers} == layers
    assert qc["bits"] == max(set(layers.values()), key=list(layers.values()).count)  # the commonest width
    assert sum(1 for r in qc["dynamic"]) == len(set(layers.values())) - 1  # one rule per other width
    state = load_file(out / "model.safetensors")
    assert _stored_bpw(state) <= 3.5 and _stored_bpw(state) == pytest.approx(run["mixed_precision"]["bpw"])
    assert "--target-bpw 3.5" in run["command"]
    card = (out / "README.md").read_text()
    assert "- mixed-precision" in card and f"{run['mixed_precision']['bpw']:.2f} bits/weight" in card
    loaded = load_model(str(out)).model
    for name, b in layers.items():
        mod = loaded.get_submodule(name)
        assert isinstance(mod, QuantLinear) and mod.bits == b
        assert state[f"{name}.qweight"].shape[0] == mod.in_features * b // 32
        mine = lm.model.get_submodule(name)  # the checkpoint reads back as the layers the job packed
        assert mine.bits == b and all(torch.equal(getattr(mod, t), getattr(mine, t)) for t in QuantLinear.PACKED)


def test_a_mixed_checkpoint_exported_again_keeps_its_widths(mixed, tmp_path):
    from llmshrink.cli import main

    _, _, _, out = mixed
    assert main(["-q", "export", str(out), "--format", "hf-gptq", "--out", str(tmp_path / "again")]) == 0
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    again = json.loads((tmp_path / "again" / "config.json").read_text())["quantization_config"]
    assert again["dynamic"] == qc["dynamic"] and again["bits"] == qc["bits"]


def test_a_target_below_every_width_is_refused_before_anything_is_written(mixed, tmp_path, text_file):
    src, _, _, _ = mixed
    calib = CalibConfig(data=str(text_file), nsamples=4, seqlen=16, batch_size=2)
    with pytest.raises(UserError, match="is below the .* bits per weight of the narrowest --bit-choices"):
        run_quantize(load_model(str(src)), QuantConfig(group_size=32), calib, tmp_path / "q", mix=MixConfig(target_bpw=2.5,
                                                                                          bit_choices="3,4"))
    assert not (tmp_path / "q").exists()


PEER_PY = Path(__file__).resolve().parents[2] / "bench" / "peers" / ".venv" / "bin" / "python"


@pytest.mark.slow
@pytest.mark.skipif(not PEER_PY.exists(), reason="no peers' environment: run `bash bench/peers/setup.sh`")
def test_gptqmodel_builds_each_layer_at_the_width_the_dynamic_rules_give(mixed, tmp_path):
    """GPTQModel's loader honours the mixed checkpoint's ``dynamic`` rules: each packed layer at
    llmshrink's width, and the same perplexity as llmshrink's loader gives (within 1 %)."""
    from tests.conftest import TEXT

    _, _, _, out = mixed
    (tmp_path / "e.txt").write_text(TEXT * 8)
    args = ["--data", str(tmp_path / "e.txt"), "--max-tokens", "512", "--seqlen", "32"]
    proc = subprocess.run([str(PEER_PY), "bench/peers/gptqmodel_run.py", "eval", str(out), *args], capture_output=True,
                          text=True, cwd=PEER_PY.parents[4])
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    layers = {r["name"]: r["bits"] for r in map(json.loads, (out / "quantize_layers.jsonl").read_text().splitlines())}
    assert theirs["widths"] == layers
    ours = subprocess.run([sys.executable, "-m", "llmshrink", "eval", str(out), *args, "--json", "--no-record"],
                          capture_output=True, text=True, check=True)
    ppl = json.loads(ours.stdout)["perplexity"]
    assert abs(theirs["perplexity"] - ppl) / ppl < 0.01
