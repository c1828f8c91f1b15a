"""Block-output reconstruction: after the GPTQ (GPTAQ) solve of a block, tune each linear's rounding
and group scales so that the quantized block's outputs match the original block's, as Intel's
AutoRound does (Cheng et al., "Optimize Weight Rounding via Signed Gradient Descent for the
Quantization of LLMs", arXiv 2309.05516), but starting from GPTQ's solution.

Each linear's codes are ``clamp(round(u / s' + v) + z, 0, maxq)``: ``u`` the weights as GPTQ's
column updates left them when each column was rounded (so ``v = 0``, ``s' = s`` is GPTQ's solution
exactly), ``v`` in [-0.5, 0.5] a learned rounding offset per weight, ``s' = s · exp(a)`` with ``a``
a learned log-scale per group and row. The block's output error (MSE against the original block's
outputs on the original inputs, the quantized block reading the quantized model's inputs) is
lowered by signed gradient steps with a linearly decaying rate, the rounding passed straight
through. The result is integer codes, scales and the same zero points: a plain GPTQ layer. The
tuned layers are kept only if their error over all the calibration batches is below GPTQ's.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .gptq import QuantResult

log = logging.getLogger(__name__)

SCALE_RANGE = 0.5  # |a| bound: a tuned scale stays within exp(±0.5) of GPTQ's
SCALE_STEP = 0.1  # the log-scales' signed step, as a share of the offsets'


@dataclass
class ReconStats:
    """One block's reconstruction: its output error (mean squared, summed over batches) before
    and after, the steps taken, and whether the tuned layers were kept."""

    before: float
    after: float
    steps: int
    kept: bool
    seconds: float = 0.0


class _Soft(torch.nn.Module):
    """A linear layer whose weight is its codes recomputed from ``u``, the learned offsets ``v`` and
    log-scales ``a`` (straight-through rounding)."""

    def __init__(self, linear: torch.nn.Linear, res: QuantResult, maxq: int):
        super().__init__()
        cols = res.g_idx.long()
        self.bias = linear.bias
        self.maxq = maxq
        self.u = res.updated.float()
        self.s = res.scales.T[:, cols].float()  # [out, in]
        self.z = res.zeros.T[:, cols].float()
        self.cols = cols
        self.v = torch.nn.Parameter(torch.zeros_like(self.u))
        self.a = torch.nn.Parameter(torch.zeros_like(res.scales.T.float()))  # [out, groups]

    def scale(self) -> torch.Tensor:
        return self.s * self.a.exp().index_select(1, self.cols)

    def codes(self, s: torch.Tensor) -> torch.Tensor:
        x = self.u / s + self.v
        return torch.clamp(x + (x.round() - x).detach() + self.z, 0, self.maxq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale()
        return F.linear(x, s * (self.codes(s) - self.z), self.bias)

    @torch.no_grad()
    def result(self, res: QuantResult) -> QuantResult:
        """``res`` with the tuned codes and scales, the scales rounded to fp16 as the checkpoint
        stores them (a relative change below 2.5e-4; the codes are the tuned ones)."""
        q = self.codes(self.scale()).round().to(torch.uint8)
        scales = (res.scales * self.a.exp().T).half().float()
        return QuantResult(q, scales, res.zeros, res.g_idx, res.perm, res.loss, res.damp)


@contextlib.contextmanager
def _swapped(block: torch.nn.Module, soft: dict[str, _Soft]) -> Iterator[None]:
    old = {name: block.get_submodule(name) for name in soft}
    try:
        for name, m in soft.items():
            block.set_submodule(name, m)
        yield
    finally:
        for name, m in old.items():
            block.set_submodule(name, m)


def _output(block, h, kw):
    out = block(h, **kw)
    return out[0] if isinstance(out, tuple) else out


def _error(block, inputs, targets, kwargs) -> float:
    with torch.no_grad():
        return sum(float(F.mse_loss(_output(block, h, kw), t)) for h, t, kw in zip(inputs, targets, kwargs, strict=True))


def reconstruct_block(block: torch.nn.Module, results: dict[str, QuantResult], maxq: int | dict[str, int], inputs: list[torch.Tensor],
                      targets: list[torch.Tensor], kwargs: list[dict], *, steps: int, lr: float = 0.005
                      ) -> tuple[dict[str, QuantResult], ReconStats]:
    """Tune the block's solved linears (``results``: local name -> GPTQ result with ``updated``)
    so that ``block`` on ``inputs`` gives ``targets`` (batch by batch, with ``kwargs``; ``maxq``: the
    largest code, or each layer's by local name); returns the
    tuned results (the given ones when tuning did not lower the error over all batches) and the
    statistics. ``block`` holds the dequantized solutions on entry and on return; ``lr``: the
    rounding offsets' first signed step (the log-scales' is ``SCALE_STEP`` of it), decaying
    linearly to 0."""
    before = _error(block, inputs, targets, kwargs)
    top = maxq if isinstance(maxq, dict) else dict.fromkeys(results, maxq)
    soft = {name: _Soft(block.get_submodule(name), res, top[name]) for name, res in results.items()}
    params = [p for m in soft.values() for p in (m.v, m.a)]
    with _swapped(block, soft):
        frozen = [p for p in block.parameters() if p.requires_grad and all(p is not q for q in params)]
        for p in frozen:
            p.requires_grad_(False)
        try:
            with torch.enable_grad():
                for t in range(steps):
                    b = t % len(inputs)
                    loss = F.mse_loss(_output(block, inputs[b], kwargs[b]), targets[b])
                    grads = torch.autograd.grad(loss, params)
                    step = lr * (1 - t / steps)
                    with torch.no_grad():
                        for k, (p, g) in enumerate(zip(params, grads, strict=True)):
                            p.sub_(g.sign(), alpha=step * (SCALE_STEP if k % 2 else 1.0))
                        for m in soft.values():
                            m.v.clamp_(-0.5, 0.5)
                            m.a.clamp_(-SCALE_RANGE, SCALE_RANGE)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        tuned = {name: m.result(results[name]) for name, m in soft.items()}
    _set_weights(block, tuned)
    after = _error(block, inputs, targets, kwargs)
    kept = after < before and math.isfinite(after)
    if not kept:
        _set_weights(block, results)
    return (tuned if kept else results), ReconStats(before, after if kept else before, steps, kept)


def _set_weights(block: torch.nn.Module, results: dict[str, QuantResult]) -> None:
    for name, res in results.items():
        mod = block.get_submodule(name)
        mod.weight.data = res.dequantize().to(mod.weight.dtype).reshape(mod.weight.shape)
