"""A quick in-process sweep of quantization settings on the default model: each row quantized in
memory (not packed, not saved) and scored on the first ``--max-tokens`` tokens of
``shakespeare:eval`` (in domain) and ``moby:eval`` (out of domain). For choosing a method's
settings; the figures to publish come from ``bench/past_gptq.py`` (saved checkpoints, the CLI,
one process per row).

    python bench/method_sweep.py --out runs/bench/sweep.jsonl \\
        --row 's3-gptq={"method": "gptq", "bits": 3, "nsamples": 32}' \\
        --row 's3-gptaq={"method": "gptaq", "bits": 3, "nsamples": 32}'

Each row is NAME=JSON: QuantConfig fields, plus ``nsamples`` and ``calib`` for the calibration
(default 128 windows of 512 tokens of shakespeare:calib); ``{"method": "none"}`` scores the
original. Rows already in OUT are skipped; each finished row is appended to it.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

CORPORA = ("shakespeare:eval", "moby:eval")


def score(lm, max_tokens: int) -> dict:
    from llmshrink.data.corpora import load_corpus
    from llmshrink.data.windows import bos_id, tokenize_corpus
    from llmshrink.eval.perplexity import perplexity

    out = {}
    for c in CORPORA:
        stream = tokenize_corpus(load_corpus(c), lm.tokenizer, max_tokens=max_tokens)
        out[c] = round(perplexity(lm.model, stream, seqlen=512, bos=bos_id(lm.tokenizer)).perplexity, 3)
    return out


def run_row(name: str, kw: dict, args) -> dict:
    from llmshrink.data.calib import CalibConfig, calibration_windows
    from llmshrink.models.load import load_model
    from llmshrink.quant.config import QuantConfig
    from llmshrink.quant.driver import quantize_model

    lm = load_model(args.model)
    calib = CalibConfig(data=kw.pop("calib", "shakespeare:calib"), nsamples=kw.pop("nsamples", 128))
    row = {"row": name, **kw, "calib": calib.data, "nsamples": calib.nsamples}
    t0 = time.perf_counter()
    if kw.get("method") != "none":
        cfg = QuantConfig(**kw)
        windows = calibration_windows(lm.tokenizer, calib) if cfg.method != "rtn" else None
        report = quantize_model(lm.model, lm.arch, windows, cfg)
        blocks = {r.name.split(".")[2]: r.block_error for r in report.layers if r.block_error}
        if blocks:
            row["block_error_ratio"] = round(sum(a for _, a in blocks.values()) / sum(b for b, _ in blocks.values()), 4)
    row["quantize_s"] = round(time.perf_counter() - t0, 1)
    return {**row, **score(lm, args.max_tokens)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--row", action="append", required=True, help="NAME=JSON (repeat)")
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/sweep.jsonl"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["row"] for line in args.out.read_text().splitlines()} if args.out.exists() else set()
    for spec in args.row:
        name, _, text = spec.partition("=")
        if name in done:
            continue
        row = run_row(name, json.loads(text), args)
        print(json.dumps(row), flush=True)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
