"""CPU decode speed: llmshrink's models (``llmshrink bench``'s measurement) and llama.cpp's GGUF
files (llama-cpp-python), same prompt length, same new tokens, same threads, one run.

    python bench/decode_peers.py --hf smollm2-135m runs/issue6/gptq4-model \\
        --gguf runs/bench/gguf/f16.gguf runs/bench/gguf/gptq-q4_0.gguf [--threads 2]

For llama.cpp: a random prompt of ``--prompt-tokens`` is evaluated, then ``--new-tokens`` greedy
tokens one at a time (``Llama.eval`` per token, its KV cache kept); a warm-up run first, then the
median of ``--repeats`` runs. Results go to runs/bench/decode_peers.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from llmshrink.eval.bench import bench_model
from llmshrink.eval.config import BenchConfig
from llmshrink.models.load import load_model


def llamacpp_decode(path: str, cfg: BenchConfig, threads: int) -> dict:
    from llmshrink.eval.llamacpp import make_llama

    llm = make_llama(path, n_ctx=cfg.prompt_tokens + cfg.new_tokens + 8, n_threads=threads,
                     n_threads_batch=threads, n_batch=cfg.prompt_tokens, logits_all=False, verbose=False)
    prompt = np.random.default_rng(0).integers(0, llm.n_vocab(), cfg.prompt_tokens).tolist()

    def argmax() -> int:  # the last token's logits (only the last token asks for them)
        return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))))

    def one(new: int) -> tuple[float, float]:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        tok = argmax()
        t1 = time.perf_counter()
        for _ in range(new):
            llm.eval([tok])
            tok = argmax()
        return t1 - t0, time.perf_counter() - t1

    one(8)
    runs = [one(cfg.new_tokens) for _ in range(cfg.repeats)]
    per_token = statistics.median(r[1] for r in runs) * 1000 / cfg.new_tokens
    return {"model": path, "prefill_ms": statistics.median(r[0] for r in runs) * 1000,
            "decode_ms_per_token": per_token, "tokens_per_second": 1000 / per_token,
            "size_on_disk": Path(path).stat().st_size, "threads": threads}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf", nargs="*", default=[])
    ap.add_argument("--gguf", nargs="*", default=[])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default="runs/bench/decode_peers.json")
    args = ap.parse_args()
    cfg = BenchConfig()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.hf:
        r = bench_model(load_model(name), cfg)
        rows.append({"engine": "llmshrink (PyTorch)", **{k: r[k] for k in
                     ("model", "prefill_ms", "decode_ms_per_token", "tokens_per_second", "size_on_disk", "threads")}})
        print(rows[-1], flush=True)
    for path in args.gguf:
        rows.append({"engine": "llama.cpp", **llamacpp_decode(path, cfg, args.threads)})
        print(rows[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": platform.machine(), "config": vars(cfg), "rows": rows},
                                         indent=2) + "\n")


if __name__ == "__main__":
    main()
