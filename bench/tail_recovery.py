"""Tail fine-tuning of a partially quantized default model, measured in and out of domain.

Quantizes the first 26 of the default model's 30 blocks with GPTQ (group 128, BITS), then tunes
the last 4 blocks and lm_head with each VARIANT (a name and FinetuneConfig fields as JSON), and
scores every model on the tuning corpus' held-out split (``shakespeare:eval``) and on an
out-of-domain corpus (``brown:eval``, the Brown corpus' 15 genres): perplexity, and the KL
divergence from the original model. Recovery = (quantized - tuned) / (quantized - original).

Resumable: finished rows are kept in ROOT/results.json; models in ROOT/.

    python bench/tail_recovery.py --root runs/tail --bits 3 \\
        --variant 'task+kd={"loss": "task+kd", "lr": 5e-4, "steps": 200, "nsamples": 200}' \\
        [--max-tokens 16384]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from functools import partial
from pathlib import Path

from tqdm import tqdm

from llmshrink.data.calib import CalibConfig
from llmshrink.eval.config import EvalConfig
from llmshrink.eval.run import evaluate_perplexity
from llmshrink.jobs.finetune import finetune
from llmshrink.jobs.quantize import run_quantize
from llmshrink.models.load import load_model
from llmshrink.quant.config import QuantConfig
from llmshrink.tune.config import FinetuneConfig

MODEL = "smollm2-135m"
CORPORA = {"in": "shakespeare:eval", "out": "brown:eval"}
BASE = dict(train="last:4", lm_head=True, distill_from=MODEL, batch_size=2, seqlen=512, eval_data="none",
            ood_data="none", eval_before=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="runs/tail")
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens of each corpus")
    ap.add_argument("--variant", action="append", default=[], help="NAME=JSON of FinetuneConfig fields")
    ap.add_argument("--keep", action="store_true", help="keep the tuned models")
    args = ap.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "results.json"
    res = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    res.update(model=MODEL, machine=f"{platform.machine()}, {platform.processor() or 'cpu'}", corpora=CORPORA,
               max_tokens=args.max_tokens)
    rows = res["rows"]
    bar = partial(tqdm, file=sys.stderr, mininterval=30)
    teacher = load_model(MODEL)

    def save():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=2) + "\n")
        tmp.replace(path)

    def score(lm) -> dict:
        out = {}
        for key, data in CORPORA.items():
            r = evaluate_perplexity(lm, EvalConfig(data=data, max_tokens=args.max_tokens), reference=teacher)
            out[key] = {"perplexity": r["perplexity"], "kl": r["kl"], "tokens": r["tokens"]}
        return out

    def row(name, fn):
        if name not in rows:
            rows[name] = fn()
            save()
        print(name, json.dumps(rows[name]), flush=True)
        return rows[name]

    orig = row("original", lambda: score(teacher))
    q = root / f"q{args.bits}"
    if not q.exists():
        run_quantize(load_model(MODEL, lazy_blocks=True), QuantConfig(bits=args.bits, group_size=128), CalibConfig(),
                     q, blocks="0:26")
    quant = row(f"gptq {args.bits}-bit g128, blocks 0:26", lambda: score(load_model(q)))
    for spec in args.variant:
        name, _, fields = spec.partition("=")
        cfg = FinetuneConfig(**{**BASE, **json.loads(fields)})

        def tune(cfg=cfg, name=name):
            out = root / f"q{args.bits}-{name}"
            t0 = time.perf_counter()
            r = finetune(load_model(q), cfg, out, overwrite=True, progress=bar)
            seconds = time.perf_counter() - t0
            s = score(load_model(out))
            if not args.keep:
                shutil.rmtree(out)
            for key in CORPORA:
                gap = quant[key]["perplexity"] - orig[key]["perplexity"]
                s[key]["recovery"] = (quant[key]["perplexity"] - s[key]["perplexity"]) / gap
            return {**s, "config": cfg.to_dict(), "finetune_seconds": seconds, "train_seconds": r.stats.seconds,
                    "loss_first": r.stats.mean_loss(True), "loss_last": r.stats.mean_loss(False)}

        row(f"gptq {args.bits}-bit + {name}", tune)


if __name__ == "__main__":
    main()
