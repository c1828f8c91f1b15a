"""One small training loop: AdamW, linear warm-up then cosine decay, gradient clipping.

The caller gives the trainable parameters, a batch source and a loss function; the loop knows
nothing about models, LoRA or distillation, so pruning's healing and fine-tuning share it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch


@dataclass
class TrainStats:
    steps: int
    tokens: int
    seconds: float
    losses: list[float] = field(default_factory=list)  # one per step

    def mean_loss(self, first: bool, n: int = 10) -> float:
        part = self.losses[:n] if first else self.losses[-n:]
        return sum(part) / len(part) if part else float("nan")


def lr_factor(step: int, steps: int, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``floor`` of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def train_loop(params: list[torch.nn.Parameter], batches: Iterable[torch.Tensor],
               loss_fn: Callable[[torch.Tensor], torch.Tensor], *, steps: int, lr: float,
               warmup: float = 0.05, clip: float = 1.0, weight_decay: float = 0.0,
               progress=None) -> TrainStats:
    """Run ``steps`` optimizer steps, one batch each; returns per-step losses and throughput."""
    if not params:
        raise ValueError("no trainable parameters")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    n_warm = max(1, int(warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, n_warm))
    stats = TrainStats(0, 0, 0.0)
    t0 = time.perf_counter()
    it = iter(batches)
    bar = progress(total=steps, desc="train", unit="step") if progress else None
    try:
        for _ in range(steps):
            ids = next(it)
            with torch.enable_grad():
                loss = loss_fn(ids)
                loss.backward()
            torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            stats.steps += 1
            stats.tokens += ids.numel()
            stats.losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                rate = stats.tokens / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{stats.losses[-1]:.3f}", tok_s=f"{rate:.0f}")
    finally:
        if bar is not None:
            bar.close()
        stats.seconds = time.perf_counter() - t0
    return stats
