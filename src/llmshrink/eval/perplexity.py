"""Perplexity over token windows.

perplexity = exp(mean negative log-likelihood of every scored token), where the windows come
from :func:`llmshrink.data.windows.eval_windows`. The sum is kept in float64 so that long corpora
do not lose precision.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ..data.windows import Window, eval_windows
from ..losses import token_nll
from ..models.health import nonfinite_activations_error

Progress = Callable[..., Iterable]


@dataclass
class PerplexityResult:
    perplexity: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    tokens: int  # scored tokens
    windows: int
    seqlen: int
    stride: int | None
    seconds: float


def _device_of(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)  # a wrapper around another runtime (llama.cpp) has none
    return p.device if p is not None else torch.device("cpu")


@torch.inference_mode()
def window_nll(model: torch.nn.Module, inputs: torch.Tensor, score_mask: torch.Tensor) -> tuple[float, int]:
    """Sum of -log p(target) over the positions where ``score_mask`` is true.

    ``inputs`` is [batch, length]; ``score_mask[b, t]`` says whether token t is a scored target
    (it is predicted from tokens < t, so position 0 is never scored).
    """
    nll = token_nll(model(input_ids=inputs, use_cache=False).logits, inputs)
    mask = score_mask[:, 1:].reshape(-1)
    return float(nll[mask].double().sum()), int(mask.sum())


def perplexity(
    model: torch.nn.Module,
    stream: torch.Tensor,
    *,
    seqlen: int = 512,
    stride: int | None = None,
    bos: int | None = None,
    batch_size: int = 4,
    name: str = "the corpus",
    progress: Progress | None = None,
) -> PerplexityResult:
    """Perplexity of ``model`` on the 1-D token ``stream``; BOS is prepended to every window if given."""
    t0 = time.perf_counter()
    windows = eval_windows(stream.numel(), seqlen, stride=stride, bos=bos is not None, name=name)
    device = _device_of(model)
    batches = [windows[i: i + batch_size] for i in range(0, len(windows), batch_size)]
    iterator = progress(batches, desc="perplexity", unit="batch") if progress else batches
    total_nll, total_tokens = 0.0, 0
    for batch in iterator:
        inputs, mask = _batch(stream, batch, bos)
        nll, count = window_nll(model, inputs.to(device), mask.to(device))
        if not math.isfinite(nll):
            raise nonfinite_activations_error(model, inputs[:1].to(device), f"scoring {name}")
        total_nll += nll
        total_tokens += count
    mean = total_nll / total_tokens
    return PerplexityResult(
        perplexity=math.exp(mean),
        nll=mean,
        tokens=total_tokens,
        windows=len(windows),
        seqlen=seqlen,
        stride=stride,
        seconds=time.perf_counter() - t0,
    )


def _batch(stream: torch.Tensor, batch: list[Window], bos: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    rows, masks = [], []
    for w in batch:
        ids = stream[w.begin: w.end]
        positions = torch.arange(w.begin, w.end)
        scored = positions >= w.score_from
        if bos is not None:
            ids = torch.cat([torch.tensor([bos]), ids])
            scored = torch.cat([torch.tensor([False]), scored])
        rows.append(ids)
        masks.append(scored)
    return torch.stack(rows), torch.stack(masks)
