"""Slow tier: the shipped recipe's tail recovery, on the real default model, must not make the
model worse on text of another genre than the one it was tuned on (issue: ``task+kd`` on
Shakespeare raised the Brown corpus' perplexity of the partially quantized model).

The recipe's own quantize and finetune settings (recipes/partial-quant-tail-finetune.yaml), with
an eighth of the calibration windows and of the fine-tuning budget so that it fits the tier;
scored on the first 4,096 tokens of ``shakespeare:eval`` (held out) and ``brown:eval`` (out of
domain), before and after, with the KL divergence from the original model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import llmshrink as ls
from llmshrink.models.zoo import DEFAULT_MODEL

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "partial-quant-tail-finetune.yaml"


def test_the_recipes_recovery_does_not_hurt_other_text(tmp_path):
    stages = [next(iter(s.items())) for s in yaml.safe_load(RECIPE.read_text())["stages"]]
    quant = dict(stages[0][1])
    tune = {k: v for k, v in stages[1][1].items() if k not in ("distill_from", "eval_data")}
    calib = ls.CalibConfig(**{**quant.pop("calib"), "nsamples": 16})
    q = tmp_path / "q"
    ls.quantize(DEFAULT_MODEL, q, ls.QuantConfig(bits=quant["bits"], group_size=quant["group_size"]), calib=calib,
                blocks=quant["blocks"])
    small = {k: max(1, v // 8) for k, v in tune.items() if k in ("steps", "nsamples", "generated")}
    cfg = ls.FinetuneConfig(**{**tune, **small, "distill_from": DEFAULT_MODEL, "eval_tokens": 4096,
                               "ood_data": "brown:eval", "eval_data": "shakespeare:eval"})
    ev = ls.finetune(q, tmp_path / "tuned", cfg).evaluation
    for key in ("out_of_domain", "held_out"):
        before, after = ev[key]["before"], ev[key]["after"]
        print(f"\n{key}: perplexity {before['perplexity']:.3f} -> {after['perplexity']:.3f} (original "
              f"{after['original_perplexity']:.3f}); KL {before['kl']:.4f} -> {after['kl']:.4f}")
        assert after["kl"] < before["kl"]  # closer to the original on both texts
    # the guard the issue asks for: not worse out of domain (at this small budget the held-out
    # perplexity moves by less than 0.1 %, either way)
    assert ev["out_of_domain"]["after"]["perplexity"] <= ev["out_of_domain"]["before"]["perplexity"]
