"""Slow tier: GPTQ-solved GGUF files of the default model, scored by llama.cpp itself, held to
BENCHMARKS.md on all of shakespeare:eval, plus 0.5 % for other CPUs: Q4_0 ("GGUF: llmshrink's
GPTQ Q4_0 ... scored by llama.cpp": 35.571, F16 33.997, llama.cpp's own Q4_0 41.920) and the
Q4_K_M mix ("GGUF K-quant mixes": 34.565, llama.cpp's own 36.044, same bytes)."""

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


def test_gptq_q4_k_m_through_llama_cpp_holds_the_benchmark(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is in the test extras")
    out = tmp_path / "q4_k_m.gguf"
    rep = ls.export(DEFAULT_MODEL, out, ls.GGUFConfig(type="q4_k_m"))
    assert rep.size == 105_453_856  # llama.cpp's own Q4_K_M of this model, to the byte
    rec = ls.evaluate(out, ls.EvalConfig(data="shakespeare:eval"))
    assert rec["backend"] == "llama.cpp" and rec["tokens"] == 82_782
    print(f"\nGPTQ Q4_K_M through llama.cpp: perplexity {rec['perplexity']:.3f} (benchmark 34.565)")
    assert 33.997 < rec["perplexity"] <= 34.565 * 1.005
