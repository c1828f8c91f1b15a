"""llmshrink: make large language models small and fast, and measure what it cost.

The public API (:mod:`llmshrink.api`: ``quantize``, ``finetune``, ``prune``, ``export``,
``evaluate``, and the lower-level names below) is imported lazily, so ``import llmshrink`` is cheap
and does nothing.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "quantize": "llmshrink.api",
    "finetune": "llmshrink.api",
    "prune": "llmshrink.api",
    "export": "llmshrink.api",
    "evaluate": "llmshrink.api",
    "load_model": "llmshrink.models.load",
    "LoadedModel": "llmshrink.models.load",
    "load_corpus": "llmshrink.data.corpora",
    "tokenize_corpus": "llmshrink.data.windows",
    "sample_windows": "llmshrink.data.windows",
    "calibration_windows": "llmshrink.data.calib",
    "perplexity": "llmshrink.eval.perplexity",
    "evaluate_perplexity": "llmshrink.eval.run",
    "generate": "llmshrink.generation",
    "gptq_quantize": "llmshrink.quant.gptq",
    "rtn_quantize": "llmshrink.quant.gptq",
    "quantize_model": "llmshrink.quant.driver",
    "score_blocks": "llmshrink.pruning.scores",
    "remove_blocks": "llmshrink.pruning.depth",
    "heal_lora": "llmshrink.pruning.heal",
    "run_prune": "llmshrink.jobs.prune",
    "decode_speed": "llmshrink.eval.speed",
    "export_gguf": "llmshrink.jobs.gguf_export",
    "load_llamacpp": "llmshrink.eval.llamacpp",
    "CalibConfig": "llmshrink.data.calib",
    "GGUFConfig": "llmshrink.exporters.config",
    "LadderConfig": "llmshrink.jobs.ladder",
    "QuantConfig": "llmshrink.quant.config",
    "PruneConfig": "llmshrink.pruning.config",
    "HealConfig": "llmshrink.pruning.config",
    "FinetuneConfig": "llmshrink.tune.config",
    "EvalConfig": "llmshrink.eval.config",
    "BenchConfig": "llmshrink.eval.config",
    "GenerateConfig": "llmshrink.generation",
    "write_card": "llmshrink.jobs.card",
    "check_output": "llmshrink.eval.check",
    "UserError": "llmshrink.errors",
}

__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'llmshrink' has no attribute {name!r}")
