"""Speed and memory of one loaded model: the job behind ``llmshrink bench``.

Decode runs at the model's own execution path (packed layers use their default kernel), after a
warm-up, with medians over repeats (:func:`.speed.decode_speed`). Weight bytes are what one
decoded token has to read: every parameter and buffer except the embedding table (one row per
token), packed layers at their packed size; the tied embedding counts once, as lm_head. Achieved
GB/s = weight bytes x tokens/s, set against the machine's read bandwidth measured here by
summing a large tensor (:func:`read_bandwidth`). Peak memory: the process' peak RSS on CPU (it
includes loading), peak allocated on CUDA.
"""

from __future__ import annotations

import dataclasses
import platform
import resource
import sys
import time

import torch

from .config import BenchConfig
from .speed import decode_speed


def read_bandwidth(device: torch.device | str = "cpu", mbytes: int = 512, repeats: int = 5) -> float:
    """Best-of-``repeats`` GB/s of reading a ``mbytes`` float32 tensor (a sum: reads, no writes)."""
    x = torch.ones(mbytes * 2**20 // 4, device=device)
    best = float("inf")
    for _ in range(repeats + 1):  # the first run warms up
        if x.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        x.sum().item()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def weight_bytes(model: torch.nn.Module, embedding: torch.nn.Module | None) -> int:
    """Bytes of weights read per decoded token (see the module docstring)."""
    skip = {id(embedding.weight)} if embedding is not None else set()
    head = model.get_output_embeddings()
    if head is not None and embedding is not None and head.weight is embedding.weight:
        skip = set()  # tied: the table is read whole as lm_head
    seen, total = set(), 0
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if id(t) in seen or id(t) in skip or "inv_freq" in name:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def bench_model(lm, cfg: BenchConfig) -> dict:
    """Decode latency, bandwidth use, memory and size of a :class:`~llmshrink.models.load.LoadedModel`."""
    model = lm.model
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    speed = decode_speed(model, model.config.vocab_size, prompt_tokens=cfg.prompt_tokens,
                         new_tokens=cfg.new_tokens, batch_size=cfg.batch_size, repeats=cfg.repeats)
    wbytes = weight_bytes(model, model.get_input_embeddings())
    bandwidth = read_bandwidth(device)
    achieved = wbytes * speed.tokens_per_second / cfg.batch_size / 1e9  # weights are read once per step
    packed = sum(1 for m in model.modules() if hasattr(m, "qweight"))
    return {
        "model": lm.name,
        "device": str(device),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "config": dataclasses.asdict(cfg),
        "prefill_ms": speed.prefill_ms,
        "decode_ms_per_token": speed.decode_ms_per_token,
        "tokens_per_second": speed.tokens_per_second,
        "weight_bytes": wbytes,
        "achieved_gb_per_s": achieved,
        "memory_bandwidth_gb_per_s": bandwidth,
        "bandwidth_fraction": achieved / bandwidth,
        "peak_memory_bytes": peak_memory(device),
        "peak_memory_kind": "peak allocated (CUDA)" if device.type == "cuda" else "peak RSS",
        "size_on_disk": lm.size_on_disk,
        "parameters": lm.num_parameters,
        "packed_layers": packed,
    }
