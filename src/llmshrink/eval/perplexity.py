"""Perplexity over token windows.

perplexity = exp(mean negative log-likelihood of every scored token), where the windows come
from :func:`llmshrink.data.windows.eval_windows`. The sum is kept in float64 so that long corpora
do not lose precision. With a ``reference`` model (the original of a compressed one), the same
pass also measures the mean KL divergence KL(reference || model) of the next-token
distributions over the scored positions: how far the model has moved from its original, on any
text, whatever the text's own likelihood.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ..data.windows import Window, eval_windows
from ..losses import token_kl, token_nll
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
    kl: float | None = None  # mean KL(reference || model) per scored token (nats), with a reference
    reference_perplexity: float | None = None  # the reference's own, on the same windows


def _device_of(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)  # a wrapper around another runtime (llama.cpp) has none
    return p.device if p is not None else torch.device("cpu")


@torch.inference_mode()
def window_nll(model: torch.nn.Module, inputs: torch.Tensor, score_mask: torch.Tensor,
               reference: torch.nn.Module | None = None) -> tuple[float, int, float, float]:
    """Sum of -log p(target) over the positions where ``score_mask`` is true, their count, and
    (with ``reference``, else 0) the sums of KL(reference || model) and of the reference's own
    -log p(target) over the same positions.

    ``inputs`` is [batch, length]; ``score_mask[b, t]`` says whether token t is a scored target
    (it is predicted from tokens < t, so position 0 is never scored).
    """
    logits = model(input_ids=inputs, use_cache=False).logits
    nll = token_nll(logits, inputs)
    mask = score_mask[:, 1:].reshape(-1)
    kl = ref_nll = 0.0
    if reference is not None:
        ref = reference(input_ids=inputs.to(_device_of(reference)), use_cache=False).logits.to(logits.device)
        kl = float(token_kl(ref, logits)[mask].double().sum())
        ref_nll = float(token_nll(ref, inputs)[mask].double().sum())
    return float(nll[mask].double().sum()), int(mask.sum()), kl, ref_nll


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
    reference: torch.nn.Module | None = None,
) -> PerplexityResult:
    """Perplexity of ``model`` on the 1-D token ``stream``; BOS is prepended to every window if
    given; with ``reference``, the mean KL divergence from it too."""
    t0 = time.perf_counter()
    windows = eval_windows(stream.numel(), seqlen, stride=stride, bos=bos is not None, name=name)
    device = _device_of(model)
    batches = [windows[i: i + batch_size] for i in range(0, len(windows), batch_size)]
    iterator = progress(batches, desc="perplexity", unit="batch") if progress else batches
    total_nll, total_tokens, total_kl, total_ref = 0.0, 0, 0.0, 0.0
    for batch in iterator:
        inputs, mask = _batch(stream, batch, bos)
        nll, count, kl, ref_nll = window_nll(model, inputs.to(device), mask.to(device), reference)
        if not math.isfinite(nll):
            raise nonfinite_activations_error(model, inputs[:1].to(device), f"scoring {name}")
        total_nll += nll
        total_tokens += count
        total_kl += kl
        total_ref += ref_nll
    mean = total_nll / total_tokens
    return PerplexityResult(
        perplexity=math.exp(mean),
        nll=mean,
        tokens=total_tokens,
        windows=len(windows),
        seqlen=seqlen,
        stride=stride,
        seconds=time.perf_counter() - t0,
        kl=total_kl / total_tokens if reference is not None else None,
        reference_perplexity=math.exp(total_ref / total_tokens) if reference is not None else None,
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
