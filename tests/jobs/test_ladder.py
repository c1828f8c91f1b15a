"""The GGUF ladder: every file into one folder with its table, resumable per file, refusing a
folder made from other settings."""

import json

import gguf
import pytest

import llmshrink.jobs.ladder as ladder_job
from llmshrink.cli import main
from llmshrink.data.calib import CalibConfig
from llmshrink.errors import UserError
from llmshrink.exporters.config import GGUFConfig
from llmshrink.jobs.export import export_gguf, run_export
from llmshrink.jobs.ladder import LADDER_ALL, LadderConfig
from llmshrink.models.load import load_model
from tests.conftest import make_tiny_model, save_model_dir

GPTQ = GGUFConfig(mse=False)  # without the range search, for time (its exactness is test_ggml's)


@pytest.fixture(scope="module")
def model256(tmp_path_factory, tokenizer):
    """Rows of 256: every K path, and llama.cpp's IQ types, without fallbacks."""
    return save_model_dir(tmp_path_factory.mktemp("m256"), make_tiny_model(
        len(tokenizer), hidden=256, intermediate=512, heads=4, kv_heads=1, std=0.08), tokenizer)


def _calib(text_file) -> CalibConfig:
    return CalibConfig(str(text_file), nsamples=8, seqlen=32, batch_size=4)


def _ladder(text_file, *types) -> LadderConfig:
    return LadderConfig(ladder=types, eval_data=str(text_file), eval_seqlen=64, eval_max_tokens=256)


def _ladder_run(model, out, text_file, *types, gcfg=GPTQ):
    return run_export(load_model(str(model)), "gguf", gcfg, out, calib=_calib(text_file),
                      ladder=_ladder(text_file, *types), load=lambda: load_model(str(model)))


def test_ladder_writes_every_file_and_its_table(tmp_path, model256, text_file):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is in the test extras")
    out = tmp_path / "ladder"
    rep = _ladder_run(model256, out, text_file, "q4_0", "q4_k_m", "iq2_xxs")
    assert list(rep.rows) == ["f16", "q4_0", "q4_k_m", "iq2_xxs"]  # F16 first: the reference
    rec = json.loads((out / "ladder.json").read_text())
    assert rec["rows"] == json.loads(json.dumps(rep.rows))
    made = {t: r["made_by"] for t, r in rep.rows.items()}
    assert made == {"f16": "llmshrink (float)", "q4_0": "llmshrink gptq", "q4_k_m": "llmshrink gptq",
                    "iq2_xxs": "llama.cpp quantizer + llmshrink imatrix"}
    params = load_model(str(model256)).num_parameters
    for r in rep.rows.values():
        f = out / r["file"]
        assert r["size"] == f.stat().st_size and r["bits_per_weight"] == pytest.approx(8 * r["size"] / params)
        assert r["perplexity"] > 1 and r["tokens"] > 0
    assert rep.rows["f16"]["size"] > rep.rows["q4_0"]["size"] > rep.rows["iq2_xxs"]["size"]
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out / rep.rows["iq2_xxs"]["file"]).tensors}
    assert types["blk.0.attn_q.weight"] == "IQ2_XXS"
    assert ladder_job.read_imatrix(out / "imatrix.gguf").keys() >= {"blk.0.attn_q.weight", "blk.1.ffn_down.weight"}
    md = (out / "ladder.md").read_text()
    assert "| Q4_K_M | llmshrink gptq |" in md and "| F16 | llmshrink (float) |" in md and "+0.000" in md
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")  # the release's card: metadata, the table, usage
    d = card.data.to_dict()
    assert d["library_name"] == "gguf" and d["quantized_by"] == "llmshrink" and "gguf" in d["tags"]
    assert len(d["model-index"][0]["results"][0]["metrics"]) == 4  # one perplexity per file
    assert md.strip() in card.text and f"llama-cli -m {rep.rows['q4_0']['file']}" in card.text
    # the ladder's file is the one a lone export writes (one set of windows made from the same settings)
    lone = tmp_path / "lone.gguf"
    export_gguf(load_model(str(model256)), GGUFConfig(type="q4_k_m", mse=False), lone, calib=_calib(text_file))
    assert lone.read_bytes() == (out / rep.rows["q4_k_m"]["file"]).read_bytes()


def test_ladder_resumes_after_a_kill(tmp_path, model256, text_file, monkeypatch):
    out = tmp_path / "ladder"
    real = ladder_job.export_gguf

    def killed(lm, cfg, path, **kw):
        if cfg.type == "q4_1":
            raise KeyboardInterrupt  # killed while solving the third file
        return real(lm, cfg, path, **kw)

    monkeypatch.setattr(ladder_job, "export_gguf", killed)
    ladder = LadderConfig(ladder=("q4_0", "q4_1"), eval_data=None)
    run = lambda: run_export(load_model(str(model256)), "gguf", GPTQ, out, calib=_calib(text_file),  # noqa: E731
                             ladder=ladder, load=lambda: load_model(str(model256)))
    with pytest.raises(KeyboardInterrupt):
        run()
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("*.gguf")}
    assert sorted(n.rsplit("-", 1)[1] for n in done) == ["F16.gguf", "Q4_0.gguf"]
    assert list(json.loads((out / "ladder.json").read_text())["rows"]) == ["f16", "q4_0"]
    assert not list(out.glob(".*"))  # nothing half-written
    monkeypatch.setattr(ladder_job, "export_gguf", real)
    rep = run()
    assert list(rep.rows) == ["f16", "q4_0", "q4_1"]
    assert {n: t for n, t in ((p.name, p.stat().st_mtime_ns) for p in out.glob("*.gguf")) if n in done} == done
    assert rep.rows["q4_1"]["bits_per_weight"] > rep.rows["q4_0"]["bits_per_weight"]


def test_ladder_refuses_a_folder_from_other_settings(tmp_path, model256, text_file):
    out = tmp_path / "ladder"
    ladder = LadderConfig(ladder=("q8_0",), eval_data=None)
    run_export(load_model(str(model256)), "gguf", GPTQ, out, calib=_calib(text_file), ladder=ladder)
    with pytest.raises(UserError, match="made with other settings"):
        run_export(load_model(str(model256)), "gguf", GGUFConfig(mse=False, damp=0.1), out, calib=_calib(text_file),
                   ladder=ladder)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a ladder folder"):
        run_export(load_model(str(model256)), "gguf", GPTQ, other, calib=_calib(text_file), ladder=ladder)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_ladder_types_are_checked():
    assert LadderConfig(ladder=("all",)).types == LADDER_ALL
    assert LadderConfig(ladder=("Q4_K_M",)).types == ("f16", "q4_k_m")
    with pytest.raises(UserError, match="unknown GGUF type 'q4_k_x'"):
        LadderConfig(ladder=("q4_k_x",))
    with pytest.raises(UserError, match="named twice"):
        LadderConfig(ladder=("q4_0", "q4_0"))


def test_cli_ladder(capsys, tmp_path, tiny_model_dir, text_file):
    out = tmp_path / "ladder"
    rc = main(["export", str(tiny_model_dir), "--ladder", "q8_0,q4_0", "--out", str(out), "--calib", str(text_file),
               "--nsamples", "4", "--seqlen", "32", "--no-mse", "--eval-data", "none"])
    printed, _ = capsys.readouterr()
    assert rc == 0 and "| Q4_0 | llmshrink gptq |" in printed
    assert sorted(p.name for p in out.glob("*.gguf")) == [f"{tiny_model_dir.name}-{t}.gguf" for t in ("F16", "Q4_0", "Q8_0")]
    card = (out / "README.md").read_text()  # the reproduce line gives the same ladder
    assert f"llmshrink export {tiny_model_dir} --out ladder " in card and "--ladder q8_0,q4_0" in card
    assert f"--calib {text_file} --nsamples 4 --seqlen 32" in card and "--no-mse" in card
    rc = main(["export", str(tiny_model_dir), "--ladder", "q4_k_x", "--out", str(tmp_path / "x")])
    _, err = capsys.readouterr()
    assert rc == 2 and "unknown GGUF type 'q4_k_x'" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
