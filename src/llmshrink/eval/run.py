"""Evaluate a loaded model on a corpus: the perplexity job behind ``llmshrink eval``."""

from __future__ import annotations

import dataclasses
import logging
import time

from ..data.corpora import load_corpus
from ..data.windows import bos_id, tokenize_corpus
from ..errors import UserError
from ..models.load import LoadedModel
from ..quant.qlinear import dequantized
from .config import EvalConfig
from .perplexity import Progress, perplexity

log = logging.getLogger(__name__)


def evaluate_perplexity(lm: LoadedModel, cfg: EvalConfig, *, progress: Progress | None = None,
                        reference: LoadedModel | None = None) -> dict:
    """Perplexity of ``lm`` on ``cfg.data``, with the model's size: one JSON-ready record; with
    ``reference`` (the model ``lm`` was made from), the KL divergence from it too."""
    t0 = time.perf_counter()
    corpus = load_corpus(cfg.data)
    stream = tokenize_corpus(corpus, lm.tokenizer, max_tokens=cfg.max_tokens)
    log.info("%s: %d documents, %d tokens", cfg.data, len(corpus.documents), stream.numel())
    if reference is not None and reference.tokenizer.get_vocab() != lm.tokenizer.get_vocab():
        raise UserError(f"the reference model {reference.name} has another vocabulary than {lm.name}: compare a "
                        "model with the one it was made from")
    with dequantized(lm.model):  # scoring is throughput work: dequantize each packed layer once
        result = perplexity(
            lm.model, stream, seqlen=cfg.seqlen, stride=cfg.stride, bos=bos_id(lm.tokenizer),
            batch_size=cfg.batch_size, name=f"corpus {cfg.data}", progress=progress,
            reference=None if reference is None else reference.model,
        )
    return {
        "model": lm.name,
        "data": cfg.data,
        **dataclasses.asdict(result),
        "seconds": time.perf_counter() - t0,  # tokenising included
        "eval_seconds": result.seconds,
        "load_seconds": lm.seconds,
        "parameters": lm.num_parameters,
        "size_on_disk": lm.size_on_disk,
        "model_path": str(lm.path),
        **({} if reference is None else {"reference": reference.name}),
    }
