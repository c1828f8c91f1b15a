"""llmshrink: make LLaMA-family language models small and fast, and measure what it cost.

The public API is imported lazily, so ``import llmshrink`` is cheap and does nothing.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "load_model": "llmshrink.models.load",
    "LoadedModel": "llmshrink.models.load",
    "load_corpus": "llmshrink.data.corpora",
    "tokenize_corpus": "llmshrink.data.windows",
    "sample_windows": "llmshrink.data.windows",
    "perplexity": "llmshrink.eval.perplexity",
    "evaluate_perplexity": "llmshrink.eval.run",
    "generate": "llmshrink.generate",
    "score_blocks": "llmshrink.prune.scores",
    "remove_blocks": "llmshrink.prune.depth",
    "heal_lora": "llmshrink.prune.heal",
    "run_prune": "llmshrink.prune.job",
    "decode_speed": "llmshrink.eval.speed",
    "export_gguf": "llmshrink.export.gguf",
    "load_llamacpp": "llmshrink.eval.llamacpp",
    "GGUFConfig": "llmshrink.config",
    "QuantConfig": "llmshrink.config",
    "PruneConfig": "llmshrink.config",
    "HealConfig": "llmshrink.config",
    "EvalConfig": "llmshrink.config",
    "GenerateConfig": "llmshrink.config",
    "UserError": "llmshrink.errors",
}

__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'llmshrink' has no attribute {name!r}")
