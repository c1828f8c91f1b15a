"""In-memory GPTQ vs RTN on the default model: perplexity and quantize time (no checkpoint saved).

    python bench/gptq_inmemory.py [--bits 3] [--group-size 128] [--nsamples 32] [--seqlen 512] [--max-tokens 16384]

Calibration: seeded windows of shakespeare:calib; evaluation: shakespeare:eval (disjoint plays).
"""

from __future__ import annotations

import argparse
import time

from llmshrink.data.corpora import load_corpus
from llmshrink.data.windows import bos_id, sample_windows, tokenize_corpus
from llmshrink.eval.config import EvalConfig
from llmshrink.eval.run import evaluate_perplexity
from llmshrink.models.load import load_model
from llmshrink.quant.config import QuantConfig
from llmshrink.quant.driver import quantize_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--asym", action="store_true")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=16384)
    args = ap.parse_args()

    ev = EvalConfig(data="shakespeare:eval", max_tokens=args.max_tokens)
    lm = load_model(args.model)
    stream = tokenize_corpus(load_corpus("shakespeare:calib"), lm.tokenizer)
    calib = sample_windows(stream, args.nsamples, args.seqlen, seed=0, bos=bos_id(lm.tokenizer))
    rows = [("original", "-", evaluate_perplexity(lm, ev)["perplexity"], 0.0)]
    for method in ("rtn", "gptq"):
        lm = load_model(args.model)
        cfg = QuantConfig(method=method, bits=args.bits, group_size=args.group_size, sym=not args.asym)
        t0 = time.perf_counter()
        quantize_model(lm.model, lm.arch, calib, cfg)
        secs = time.perf_counter() - t0
        rows.append((method, f"{args.bits}-bit g{args.group_size} {'asym' if args.asym else 'sym'}",
                     evaluate_perplexity(lm, ev)["perplexity"], secs))
    base = rows[0][2]
    print(f"calibration: {args.nsamples} x {args.seqlen} tokens of shakespeare:calib (seed 0); "
          f"eval: first {args.max_tokens} tokens of shakespeare:eval\n")
    print("| method | grid | perplexity | increase | quantize s |")
    print("|---|---|---:|---:|---:|")
    for name, grid, ppl, secs in rows:
        print(f"| {name} | {grid} | {ppl:.3f} | {ppl - base:+.3f} | {secs:.0f} |")


if __name__ == "__main__":
    main()
