"""Heal a pruned model with LoRA (through ``peft``), then merge the adapters into the weights.

The loss is next-token cross-entropy on a corpus (``lm``), the KL divergence from the unpruned
model's next-token distribution (``kd``: distillation, needs the teacher), or their sum. The
result is a plain model: LoRA products are merged, no peft modules remain.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..data.calib import corpus_windows
from ..errors import UserError
from ..models.arch import ArchSpec
from ..tune.train import TrainStats, train_loop
from .config import HealConfig

log = logging.getLogger(__name__)


def _loss_fn(model, teacher, kind: str):
    def loss(ids: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        flat = logits.reshape(-1, logits.size(-1))
        total = logits.new_zeros(())
        if kind in ("lm", "lm+kd"):
            total = total + F.cross_entropy(flat, ids[:, 1:].reshape(-1))
        if kind in ("kd", "lm+kd"):
            with torch.no_grad():
                t = teacher(input_ids=ids, use_cache=False).logits[:, :-1].float()
            t = F.log_softmax(t.reshape(-1, t.size(-1)), dim=-1)
            total = total + F.kl_div(F.log_softmax(flat, dim=-1), t, log_target=True, reduction="batchmean")
        return total

    return loss


def heal_lora(model: torch.nn.Module, arch: ArchSpec, tokenizer, cfg: HealConfig, *,
              teacher: torch.nn.Module | None = None, progress=None) -> tuple[torch.nn.Module, TrainStats]:
    """LoRA on every linear layer of the decoder blocks, trained ``cfg.steps`` steps, merged."""
    from peft import LoraConfig, get_peft_model

    if cfg.loss != "lm" and teacher is None:
        raise UserError(f"healing loss {cfg.loss!r} distils from the unpruned model: give it as the teacher")
    device = next(model.parameters()).device
    windows = corpus_windows(cfg.data, tokenizer, cfg.steps * cfg.batch_size, cfg.seqlen, seed=cfg.seed,
                             role="healing")
    batches = (windows[i: i + cfg.batch_size].to(device) for i in range(0, len(windows), cfg.batch_size))
    targets = sorted({name.rsplit(".", 1)[-1] for name in arch.linear_names})
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=targets, bias="none")
    torch.manual_seed(cfg.seed)
    peft_model = get_peft_model(model, lora)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    log.info("healing: LoRA rank %d on %s, %d trainable parameters, %d steps of %d x %d tokens (%s loss)",
             cfg.rank, ",".join(targets), sum(p.numel() for p in params), cfg.steps, cfg.batch_size,
             cfg.seqlen, cfg.loss)
    if teacher is not None:
        teacher.eval()
    peft_model.train()
    try:
        stats = train_loop(params, batches, _loss_fn(peft_model, teacher, cfg.loss), steps=cfg.steps,
                           lr=cfg.lr, progress=progress)
    finally:
        peft_model.eval()
    merged = peft_model.merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(False)
    log.info("healed in %.0f s: loss %.3f -> %.3f", stats.seconds, stats.mean_loss(True), stats.mean_loss(False))
    return merged, stats
