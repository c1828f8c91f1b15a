"""Decode latency at batch 1: prefill a prompt, then time single-token steps with the KV cache.

Random prompt tokens (fixed seed): speed does not depend on the text. A warm-up run comes first;
the reported numbers are medians over ``repeats`` runs.
"""

from __future__ import annotations

import inspect
import statistics
import time
from dataclasses import dataclass

import torch


@dataclass
class DecodeSpeed:
    prompt_tokens: int
    new_tokens: int
    batch_size: int
    prefill_ms: float  # median time to run the prompt
    decode_ms_per_token: float  # median over runs of (decode time / new tokens)
    tokens_per_second: float  # batch_size * 1000 / decode_ms_per_token
    repeats: int
    threads: int


@torch.inference_mode()
def _one_run(model, ids: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    # transformers 5 renamed the cache argument and output; older releases say past_key_values
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True)
    past = getattr(out, key)
    nxt = out.logits[:, -1:].argmax(-1)
    t1 = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=nxt, use_cache=True, **{key: past})
        past = getattr(out, key)
        nxt = out.logits[:, -1:].argmax(-1)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def decode_speed(model: torch.nn.Module, vocab_size: int, *, prompt_tokens: int = 128, new_tokens: int = 64,
                 batch_size: int = 1, repeats: int = 3, seed: int = 0) -> DecodeSpeed:
    """Greedy decoding speed of ``model`` (its own KV cache) from a random prompt."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch_size, prompt_tokens), generator=gen).to(device)
    _one_run(model, ids, min(new_tokens, 8))  # warm-up
    runs = [_one_run(model, ids, new_tokens) for _ in range(repeats)]
    prefill = statistics.median(r[0] for r in runs) * 1000
    per_token = statistics.median(r[1] for r in runs) * 1000 / new_tokens
    return DecodeSpeed(prompt_tokens, new_tokens, batch_size, prefill, per_token,
                       batch_size * 1000 / per_token, repeats, torch.get_num_threads())
