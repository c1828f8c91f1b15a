"""One small training loop: AdamW, linear warm-up then cosine decay, gradient clipping.

The caller gives the trainable parameters, a batch source and a loss function; the loop knows
nothing about models, LoRA or distillation, so pruning's healing and fine-tuning share it.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from ..errors import UserError


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


def train_loop(params: list[torch.nn.Parameter] | list[dict], batches: Iterable, loss_fn: Callable[[object], torch.Tensor], *,
               steps: int, lr: float, warmup: float = 0.05, clip: float = 1.0, weight_decay: float = 0.0,
               grad_accum: int = 1, tokens_of: Callable[[object], int] = lambda b: b.numel(),
               start_step: int = 0, opt_state: dict | None = None,
               on_step: Callable[[int, torch.optim.Optimizer, TrainStats], None] | None = None,
               sync: Callable[[list[torch.nn.Parameter], float], float] | None = None, world: int = 1,
               progress=None) -> TrainStats:
    """Run optimizer steps ``start_step`` to ``steps``, each over ``grad_accum`` batches (their
    losses averaged); returns per-step losses and throughput. ``opt_state`` resumes the optimizer
    (the learning-rate schedule follows from the step), ``on_step(step, optimizer, stats)`` runs
    after each step (checkpoints). ``params`` may be parameter groups (dicts with ``params`` and
    their own ``lr``); the schedule scales every group's rate alike. ``sync(params, loss)``, given,
    runs after each step's backward passes and returns the step's loss: data-parallel, each of
    ``world`` processes runs ``grad_accum / world`` of the step's batches and ``sync`` sums the
    gradients and the loss across them."""
    flat = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else params
    if not flat:
        raise ValueError("no trainable parameters")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    n_warm = max(1, int(warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, n_warm))
    with warnings.catch_warnings():  # replaying the schedule up to a resumed step, before any optimizer step
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(start_step):
            sched.step()
    stats = TrainStats(start_step, 0, 0.0)
    t0 = time.perf_counter()
    it = iter(batches)
    bar = progress(total=steps, initial=start_step, desc="train", unit="step") if progress else None
    try:
        for step in range(start_step, steps):
            total = 0.0
            for _ in range(grad_accum // world):
                batch = next(it)
                with torch.enable_grad():
                    loss = loss_fn(batch) / grad_accum
                    loss.backward()
                total += float(loss.detach())
                stats.tokens += tokens_of(batch)
            if sync is not None:
                total = sync(flat, total)
            if not math.isfinite(total):  # before the step: the weights and the checkpoint stay finite
                raise UserError(f"the training loss became non-finite (NaN/inf) at step {step + 1}: lower --lr, "
                                "or train in --dtype float32; the last checkpoint is kept for --resume")
            torch.nn.utils.clip_grad_norm_(flat, clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            stats.steps = step + 1
            stats.losses.append(total)
            if on_step is not None:
                on_step(step + 1, opt, stats)
            if bar is not None:
                bar.update(1)
                rate = stats.tokens / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{total:.3f}", tok_s=f"{rate:.0f}")
    finally:
        if bar is not None:
            bar.close()
        stats.seconds = time.perf_counter() - t0
    return stats
