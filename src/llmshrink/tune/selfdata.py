"""Distillation data written by the original model itself (the data-free trick of LLM-QAT).

Text a model samples from its own next-token distribution covers what the model knows, not one
corpus' genre: tuning a compressed copy to match the original on such text teaches it to behave
like the original everywhere. Each window starts (after BOS, where the tokenizer adds one) from a
token drawn uniformly from the ordinary vocabulary, so windows do not all open alike, then the
model samples at temperature 1 with no top-k or top-p cut (its own distribution) to the full
length; end-of-text and padding tokens are not allowed, so every window is full. Our own loop
over the model's key/value cache, with one seeded generator: the same windows on every run.
"""

from __future__ import annotations

import inspect
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
                        batch_size: int = 48, progress=None) -> torch.Tensor:
    """``n`` windows of ``seqlen`` token ids [n, seqlen] sampled from ``model``, deterministic in ``seed``."""
    bos = bos_id(tokenizer)
    firsts = ordinary_tokens(tokenizer)
    banned = [i for i in {tokenizer.eos_token_id, tokenizer.pad_token_id} if i is not None]
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    rows = []
    batches = range(0, n, batch_size)
    t0 = time.perf_counter()
    for start in progress(batches, desc="writing distillation text", unit="batch") if progress else batches:
        size = min(batch_size, n - start)
        first = firsts[torch.randint(len(firsts), (size, 1), generator=g)]
        prompt = first if bos is None else torch.cat([torch.full((size, 1), bos), first], dim=1)
        rows.append(_sample(model, prompt.to(device), seqlen, banned, g).cpu())
    windows = torch.cat(rows)
    log.info("sampled %d windows of %d tokens from the original model in %.0f s", n, seqlen,
             time.perf_counter() - t0)
    return windows


def _sample(model: torch.nn.Module, prompt: torch.Tensor, seqlen: int, banned: list[int],
            g: torch.Generator) -> torch.Tensor:
    """Continue ``prompt`` [batch, k] to ``seqlen`` tokens, sampling each from the model's full
    distribution (temperature 1) with the ``banned`` tokens' probability set to zero."""
    from transformers import DynamicCache

    # transformers 5 renamed the cache argument; older releases take past_key_values
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = DynamicCache()
    ids = torch.empty(prompt.shape[0], seqlen, dtype=torch.long, device=prompt.device)
    ids[:, : prompt.shape[1]] = prompt
    logits = model(input_ids=prompt, use_cache=True, **{key: cache}).logits
    for t in range(prompt.shape[1], seqlen):
        probs = torch.softmax(logits[:, -1].float(), dim=-1)
        probs[:, banned] = 0
        ids[:, t] = torch.multinomial(probs.cpu(), 1, generator=g).squeeze(1).to(ids.device)
        if t + 1 < seqlen:
            logits = model(input_ids=ids[:, t: t + 1], use_cache=True, **{key: cache}).logits
    return ids
