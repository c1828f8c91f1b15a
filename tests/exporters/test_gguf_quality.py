"""Slow tier: the GPTQ-solved Q4_0 GGUF file of the default model, scored by llama.cpp itself,
held to BENCHMARKS.md ("GGUF: llmshrink's GPTQ Q4_0 ... scored by llama.cpp": 35.571 on all of
shakespeare:eval, F16 33.997, llama.cpp's own Q4_0 41.920), plus 0.5 % for other CPUs."""

from __future__ import annotations

import pytest

import llmshrink as ls
from llmshrink.models.zoo import DEFAULT_MODEL

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_gptq_q4_0_through_llama_cpp_holds_the_benchmark(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is in the test extras")
    out = tmp_path / "q4_0.gguf"
    ls.export(DEFAULT_MODEL, out, ls.GGUFConfig(type="q4_0"))
    rec = ls.evaluate(out, ls.EvalConfig(data="shakespeare:eval"))
    assert rec["backend"] == "llama.cpp" and rec["tokens"] == 82_782
    print(f"\nGPTQ Q4_0 through llama.cpp: perplexity {rec['perplexity']:.3f} (benchmark 35.571)")
    assert 33.997 < rec["perplexity"] <= 35.571 * 1.005
