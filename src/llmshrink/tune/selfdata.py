"""Distillation data written by the original model itself (the data-free trick of LLM-QAT).

Text a model samples from its own next-token distribution covers what the model knows, not one
corpus' genre: tuning a compressed copy to match the original on such text teaches it to behave
like the original everywhere. Each window starts (after BOS, where the tokenizer adds one) from a
token drawn uniformly from the ordinary vocabulary, so windows do not all open alike, then the
model samples at temperature 1 with no top-k or top-p cut (its own distribution) to the full
length; end-of-text tokens are not allowed, so every window is full.
"""

from __future__ import annotations

import logging
import time

import torch

from ..data.windows import bos_id

log = logging.getLogger(__name__)


def ordinary_tokens(tokenizer) -> torch.Tensor:
    """Ids of the vocabulary without special or added tokens."""
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return torch.tensor([i for i in range(len(tokenizer)) if i not in special], dtype=torch.long)


@torch.inference_mode()
def sample_text_windows(model: torch.nn.Module, tokenizer, n: int, seqlen: int, *, seed: int = 0,
                        batch_size: int = 16, progress=None) -> torch.Tensor:
    """``n`` windows of ``seqlen`` token ids [n, seqlen] sampled from ``model``, deterministic in ``seed``."""
    bos = bos_id(tokenizer)
    firsts = ordinary_tokens(tokenizer)
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    rows = []
    batches = range(0, n, batch_size)
    t0 = time.perf_counter()
    for start in progress(batches, desc="writing distillation text", unit="batch") if progress else batches:
        size = min(batch_size, n - start)
        first = firsts[torch.randint(len(firsts), (size, 1), generator=g)]
        prompt = first if bos is None else torch.cat([torch.full((size, 1), bos), first], dim=1)
        torch.manual_seed(seed * 1_000_003 + start)  # generate() draws from the global generator
        new = seqlen - prompt.shape[1]
        out = model.generate(prompt.to(device), attention_mask=torch.ones_like(prompt).to(device), do_sample=True,
                             temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new, min_new_tokens=new,
                             pad_token_id=tokenizer.eos_token_id if tokenizer.pad_token_id is None
                             else tokenizer.pad_token_id)
        rows.append(out[:, :seqlen].cpu())
    windows = torch.cat(rows)
    log.info("sampled %d windows of %d tokens from the original model in %.0f s", n, seqlen,
             time.perf_counter() - t0)
    return windows
