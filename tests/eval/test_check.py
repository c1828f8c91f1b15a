"""``llmshrink check``: each installed consumer loads the output, runs it, and is compared with
llmshrink's own logits; one that is missing or fails says so."""

import json

import pytest

from llmshrink.cli import main
from llmshrink.errors import UserError
from llmshrink.eval.check import check_output, format_report
from tests.conftest import make_tiny_model, save_model_dir


def test_a_plain_folder_runs_in_transformers_as_in_llmshrink(tiny_model_dir):
    report = check_output(tiny_model_dir)
    by = {r.consumer: r for r in report.results}
    assert report.kind == "plain" and len(report.reference) == 8
    t = by["transformers"]
    assert t.status == "ok" and t.loads and t.runs and t.same_greedy and t.tokens == report.reference
    assert t.max_logit_diff is not None and t.max_logit_diff < 1e-4
    assert by["gptqmodel"].status == "not applicable" and by["llama.cpp"].status == "not applicable"
    table = format_report(report)
    assert "transformers  ok" in table and "gptqmodel does not load plain outputs" in table


def test_a_gptq_folder_without_gptqmodel_says_what_to_install(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import importlib.util

    out = tmp_path / "q"
    assert main(["-q", "quantize", str(tiny_model_dir), "--out", str(out), "--method", "rtn",
                 "--group-size", "32"]) == 0
    real = importlib.util.find_spec
    gone = ("gptqmodel", "optimum", "vllm")
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in gone else real(n, *a))
    capsys.readouterr()
    assert main(["-q", "check", str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    by = {r["consumer"]: r for r in rep["results"]}
    assert by["transformers"]["status"] == "not installed" and by["transformers"]["why"] == "pip install gptqmodel optimum"
    assert by["gptqmodel"]["why"] == "pip install gptqmodel"
    assert by["vllm"]["status"] == "not installed" and "bash bench/peers/vllm_setup.sh" in by["vllm"]["why"]
    assert json.loads((out / "llmshrink_check.json").read_text()) == rep  # kept beside the card


def test_a_gguf_file_runs_in_llama_cpp(tmp_path, tokenizer):
    pytest.importorskip("llama_cpp")
    src = save_model_dir(tmp_path / "m", make_tiny_model(len(tokenizer), layers=2), tokenizer)
    gguf = tmp_path / "m.gguf"
    assert main(["-q", "export", str(src), "--type", "f16", "--out", str(gguf)]) == 0
    r = {x.consumer: x for x in check_output(gguf).results}["llama.cpp"]
    assert r.status == "ok" and r.same_greedy and r.max_logit_diff < 0.05


def test_a_failing_consumer_is_reported_with_its_reason(tiny_model_dir, monkeypatch, capsys):
    from llmshrink.eval import consumers

    def broken(path, kind):
        raise RuntimeError("expect K to be divisible by qGroupSize\\nmore detail")

    monkeypatch.setitem(consumers.CONSUMERS, "transformers",
                        consumers.CONSUMERS["transformers"].__class__("transformers", ("plain",), (), broken,
                                                                      lambda n, k: ""))
    assert main(["-q", "check", str(tiny_model_dir), "--consumer", "transformers"]) == 1
    out = capsys.readouterr().out
    assert "transformers  failed  no" in out and "RuntimeError: expect K to be divisible by qGroupSize" in out


def test_bad_paths_and_consumers(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        check_output(tmp_path / "missing")
    with pytest.raises(UserError, match="has no config.json"):
        check_output(tmp_path)


def test_vllm_rows_line_up_with_the_positions(tiny_model_dir, monkeypatch):
    """vLLM gives the scores of prompt token i (after tokens < i) as prompt_logprobs[i] and those
    after the last token as the sample's logprobs[0]; the consumer stacks them into logits. A
    stand-in engine serving a transformers model's raw logits that way must check out exactly."""
    import sys
    import types
    from dataclasses import dataclass

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    seen = {}

    @dataclass
    class Logprob:
        logprob: float

    class LLM:
        def __init__(self, **kw):
            seen.update(kw)

        def generate(self, prompts, params, use_tqdm=True):
            ids = torch.tensor([prompts[0]["prompt_token_ids"]])
            with torch.no_grad():
                logits = model(ids).logits[0]
            rows = [{t: Logprob(float(v)) for t, v in enumerate(row)} for row in logits]
            sample = types.SimpleNamespace(logprobs=[rows[-1]] if params.get("logprobs") else None,
                                           token_ids=[int(logits[-1].argmax())])
            return [types.SimpleNamespace(prompt_logprobs=[None, *rows[:-1]], outputs=[sample])]

    fake = types.ModuleType("vllm")
    fake.LLM, fake.SamplingParams = LLM, lambda **kw: kw
    fake.__spec__ = types.SimpleNamespace(name="vllm")
    monkeypatch.setitem(sys.modules, "vllm", fake)
    r = {x.consumer: x for x in check_output(tiny_model_dir, ["vllm"]).results}["vllm"]
    assert r.status == "ok" and r.same_greedy and r.max_logit_diff < 1e-4, r
    assert seen["logprobs_mode"] == "raw_logits" and seen["model"] == str(tiny_model_dir)


def test_what_a_tool_and_its_processes_print_stays_out_of_json(tiny_model_dir, monkeypatch, capfd):
    import os
    import subprocess

    from llmshrink.eval import consumers

    def noisy(path, kind):
        os.write(1, b"banner from the tool\n")
        subprocess.run(["echo", "banner from its engine process"], check=True)
        return consumers._transformers(path, kind)

    real = consumers.CONSUMERS["transformers"]
    monkeypatch.setitem(consumers.CONSUMERS, "transformers",
                        real.__class__("transformers", ("plain",), (), noisy, real.snippet))
    assert main(["-q", "check", str(tiny_model_dir), "--consumer", "transformers", "--json", "--no-record"]) == 0
    out, err = capfd.readouterr()
    assert json.loads(out)["results"][0]["status"] == "ok"
    assert "banner from the tool" in err and "banner from its engine process" in err
