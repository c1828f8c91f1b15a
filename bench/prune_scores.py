"""Cached vs naive leave-one-out perplexity scoring (Shortened LLaMA's ``ppl`` criterion).

Loads the model once, builds the scoring windows of ``llmshrink prune`` (same defaults), then
times ``ppl_leave_one_out`` (shared prefixes) and ``ppl_leave_one_out_naive`` (one full forward
pass per removed block) on the same batches, checks the scores are identical, and prints the
ratio. Results go to runs/bench/prune_scores.json.

    python bench/prune_scores.py [--model smollm2-135m] [--nsamples 32] [--seqlen 256]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from llmshrink.jobs.prune import scoring_batches
from llmshrink.models.load import load_model
from llmshrink.pruning.config import PruneConfig
from llmshrink.pruning.scores import ppl_leave_one_out, ppl_leave_one_out_naive


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--nsamples", type=int, default=PruneConfig.nsamples)
    ap.add_argument("--seqlen", type=int, default=PruneConfig.seqlen)
    ap.add_argument("--batch-size", type=int, default=PruneConfig.batch_size)
    ap.add_argument("--out", default="runs/bench/prune_scores.json")
    args = ap.parse_args()
    lm = load_model(args.model)
    cfg = PruneConfig(nsamples=args.nsamples, seqlen=args.seqlen, batch_size=args.batch_size)
    batches = scoring_batches(lm, cfg)
    runs = {}
    for name, fn in (("cached", ppl_leave_one_out), ("naive", ppl_leave_one_out_naive)):
        t0 = time.perf_counter()
        scores, detail = fn(lm.model, lm.arch, batches)
        runs[name] = {"seconds": time.perf_counter() - t0, "scores": scores, **detail}
        print(f"{name}: {runs[name]['seconds']:.1f} s", flush=True)
    identical = runs["cached"]["scores"] == runs["naive"]["scores"]
    ratio = runs["cached"]["seconds"] / runs["naive"]["seconds"]
    rec = {"model": args.model, "nsamples": args.nsamples, "seqlen": args.seqlen, "batch_size": args.batch_size,
           "threads": torch.get_num_threads(), "machine": platform.machine(), "identical": identical,
           "ratio": ratio, **runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rec, indent=2) + "\n")
    print(f"identical scores: {identical}; cached/naive time: {ratio:.3f}")


if __name__ == "__main__":
    main()
