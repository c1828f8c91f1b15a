"""Slow tier: GPTQ quality on the real default model, held to the numbers in BENCHMARKS.md
("GPTQ on the default model": 128 x 512 calibration tokens of shakespeare:calib, symmetric,
act-order), scored on the first 16,384 tokens of shakespeare:eval (original 35.087) so that the
tier fits CI's time; the same checkpoints score 36.682 (4-bit) and 45.007 (3-bit) on all 82,271
(re-measured 2026-12-03 with the tokenizer's SmolLM split restored, which moves calibration
windows, and 16-bit release files).

A threshold is the benchmarked perplexity plus 1.5 %: the solve is deterministic on one machine,
not across machines. The code at 5bb1a38, whose CI passed within 0.5 % of 37.551 (4-bit), gives
37.836 (+0.76 %) on another machine (Xeon, AVX-512; transformers 5.24 and 5.25 write the same
bytes) and 37.878 there with PyTorch held to AVX2; the original model scores 35.087 on both
(BENCHMARKS.md, "GPTQ on the default model"). The 4-bit threshold (38.114) still fails a solve
that loses more than about 5 % of GPTQ's gain over round-to-nearest (49.928 on the same prefix)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

import llmshrink as ls
from llmshrink.models.zoo import DEFAULT_MODEL
from llmshrink.quant.gptq import accumulate_hessian

from .reference_gptq import fasterquant

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ORIGINAL = 35.087  # first 16,384 tokens of shakespeare:eval
CALIB = ls.CalibConfig(data="shakespeare:calib")  # the benchmark's calibration, whatever the default
PEER_PY = Path(__file__).resolve().parents[2] / "bench" / "peers" / ".venv" / "bin" / "python"


@pytest.fixture(scope="module")
def q4_g128(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("slow") / "q4-g128"
    ls.quantize(DEFAULT_MODEL, out, ls.QuantConfig(bits=4, group_size=128), calib=CALIB)
    return out


def _ppl(model, max_tokens: int = 16_384) -> float:
    rec = ls.evaluate(model, ls.EvalConfig(data="shakespeare:eval", max_tokens=max_tokens))
    assert rec["tokens"] == max_tokens - max_tokens // 512  # windows of 512: each one's first token is context
    return rec["perplexity"]


@pytest.mark.parametrize(("bits", "benchmark"), [(4, 37.551), (3, 45.494)])
def test_gptq_g128_perplexity_holds_the_benchmark(bits, benchmark, request, tmp_path):
    out = request.getfixturevalue("q4_g128") if bits == 4 else tmp_path / "q3-g128"
    if bits != 4:
        ls.quantize(DEFAULT_MODEL, out, ls.QuantConfig(bits=bits, group_size=128), calib=CALIB)
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (cfg["bits"], cfg["group_size"], cfg["sym"], cfg["desc_act"]) == (bits, 128, True, True)
    ppl = _ppl(out)
    print(f"\n{bits}-bit g128: perplexity {ppl:.3f} on 16,384 tokens (benchmark {benchmark}, original {ORIGINAL})")
    assert ORIGINAL < ppl <= benchmark * 1.015


def test_gptq_on_real_weights_is_the_reference_loop():
    """Block 0's q_proj and down_proj of the default model, their Hessians from real calibration
    activations (the block's normed inputs, and its MLP's), solved by ``gptq_quantize`` and by
    the reference loop with llmshrink's deviations off: the same bits."""
    lm = ls.load_model(DEFAULT_MODEL)
    windows = ls.calibration_windows(lm.tokenizer, ls.CalibConfig(nsamples=8, seqlen=256))
    block = lm.arch.blocks(lm.model)[0]
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, _o, n=n: seen.__setitem__(n, inp[0].detach()))
             for n, m in (("q", block.self_attn.q_proj), ("down", block.mlp.down_proj))]
    with torch.no_grad():
        lm.model.model.layers = lm.model.model.layers[:1]  # one block is all the Hessians need
        lm.model.lm_head = torch.nn.Identity()
        lm.model(windows)
    for h in hooks:
        h.remove()
    for name, layer in (("q", block.self_attn.q_proj), ("down", block.mlp.down_proj)):
        H = accumulate_hessian(None, 0, seen[name])[0]
        W = layer.weight.detach()
        for bits, sym in ((4, True), (3, False)):
            cfg = ls.QuantConfig(bits=bits, group_size=128, sym=sym, mse=False, block_size=128)
            ours = ls.gptq_quantize(W, H, cfg).dequantize()
            ref = fasterquant(W, H, bits=bits, groupsize=128, sym=sym, actorder=True, static_groups=False)
            assert torch.equal(ours, ref), f"{name} {bits}-bit: max |diff| {(ours - ref).abs().max():.3g}"


@pytest.mark.skipif(not PEER_PY.exists(), reason="no peers' environment: run `bash bench/peers/setup.sh`")
def test_gptqmodel_reads_our_checkpoint_like_we_do(q4_g128):
    """GPTQModel (its gptq_torch backend) loads llmshrink's 4-bit g128 checkpoint and scores the
    first 8,192 tokens within 0.5 % of llmshrink's own loader (BENCHMARKS: +0.09 %)."""
    ours = _ppl(q4_g128, max_tokens=8192)
    proc = subprocess.run([str(PEER_PY), "bench/peers/gptqmodel_run.py", "eval", str(q4_g128), "--max-tokens",
                           "8192"], capture_output=True, text=True, check=True, cwd=PEER_PY.parents[4])
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])["perplexity"]
    print(f"\nfirst 8192 tokens: llmshrink {ours:.4f}, GPTQModel {theirs:.4f}")
    assert abs(theirs - ours) / ours < 0.005
