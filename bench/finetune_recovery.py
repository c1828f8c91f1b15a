"""Partial quantization + tail fine-tuning on the default model: how much of the quantization
loss does distilling the last blocks and lm_head recover?

For each bit width: GPTQ (group 128) on the first 26 of 30 blocks, perplexity on shakespeare:eval;
then ``finetune`` of the last 4 blocks and lm_head by distillation from the original model on
shakespeare:calib, perplexity again; recovery = (ppl_quantized - ppl_tuned) / (ppl_quantized -
ppl_original). Then the instruction-data path: the 3-bit model tuned on a small alpaca set built
from the corpus (tests/tune/instruct_set.py), its held-out response loss before and after.

Resumable: finished rows are kept in ROOT/results.json; models in ROOT/.

    python bench/finetune_recovery.py [--root runs/bench/finetune] [--bits 3 4] [--steps 200] [--nsamples 200] [--seqlen 512] [--batch-size 2] [--lr 5e-4] [--loss-tokens 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from functools import partial
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.tune.instruct_set

from llmshrink.data.calib import CalibConfig
from llmshrink.eval.config import EvalConfig
from llmshrink.eval.run import evaluate_perplexity
from llmshrink.jobs.finetune import finetune
from llmshrink.jobs.quantize import run_quantize
from llmshrink.models.load import load_model
from llmshrink.quant.config import QuantConfig
from llmshrink.tune.config import FinetuneConfig

MODEL = "smollm2-135m"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="runs/bench/finetune")
    ap.add_argument("--bits", type=int, nargs="+", default=[3, 4])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--nsamples", type=int, default=200)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--loss-tokens", type=float, default=1.0, help="fraction of positions the loss is taken on")
    ap.add_argument("--head-lr", type=float, default=None, help="lm_head's learning rate (default: --lr)")
    ap.add_argument("--hidden-loss", type=float, default=0.0, help="weight of the final-hidden-state loss")
    ap.add_argument("--loss", default="kd", choices=["kd", "task+kd"],
                    help="kd: distillation alone; task+kd: plus next-token cross-entropy on the corpus")
    ap.add_argument("--control", action="store_true",
                    help="also tune the original model the same way (how much of a gain is the corpus, not recovery)")
    ap.add_argument("--instruct-steps", type=int, default=60)
    args = ap.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "results.json"
    res = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    bar = partial(tqdm, file=sys.stderr, mininterval=10)
    res.update(nsamples=args.nsamples, seqlen=args.seqlen, batch_size=args.batch_size, model=MODEL, machine=f"{platform.machine()}, {platform.processor() or 'cpu'}", steps=args.steps,
               lr=args.lr)
    rows = res["rows"]

    def save():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=2) + "\n")
        tmp.replace(path)

    def row(name, fn):
        if name not in rows:
            rows[name] = fn()
            save()
        print(name, rows[name], flush=True)
        return rows[name]

    def ppl(spec):
        return evaluate_perplexity(load_model(spec), EvalConfig())["perplexity"]

    orig = row("original", lambda: {"perplexity": ppl(MODEL)})["perplexity"]
    for bits in args.bits:
        q = root / f"q{bits}"
        if not q.exists():
            run_quantize(load_model(MODEL, lazy_blocks=True), QuantConfig(bits=bits, group_size=128), CalibConfig(),
                         q, blocks="0:26")
        pq = row(f"gptq {bits}-bit g128, blocks 0:26", lambda q=q: {"perplexity": ppl(q)})["perplexity"]

        def tune(q=q, bits=bits, pq=pq, out=None):
            cfg = FinetuneConfig(train="last:4", lm_head=True, distill_from=MODEL, steps=args.steps,
                                 batch_size=args.batch_size,
                                 seqlen=args.seqlen, nsamples=args.nsamples, lr=args.lr,
                                 loss_tokens=args.loss_tokens, head_lr=args.head_lr, hidden_loss=args.hidden_loss,
                                 loss=args.loss)
            t0 = time.perf_counter()
            r = finetune(load_model(q), cfg, out or root / f"q{bits}-tuned", progress=bar)
            p = r.evaluation["perplexity"]
            return {"perplexity": p, "recovery": (pq - p) / (pq - orig) if pq != orig else None, "train_seconds": r.stats.seconds,
                    "seconds": time.perf_counter() - t0, "tokens": r.stats.tokens,
                    "loss_first": r.stats.mean_loss(True), "loss_last": r.stats.mean_loss(False)}

        how = (f"{args.steps} steps x {args.batch_size} x {args.seqlen}, {args.nsamples} windows, lr {args.lr:g}, "
               f"loss on {args.loss_tokens:g} of positions"
               + (f", lm_head lr {args.head_lr:g}" if args.head_lr else "")
               + (f", hidden-state loss x{args.hidden_loss:g}" if args.hidden_loss else "")
               + (f", loss {args.loss}" if args.loss != "kd" else ""))
        row(f"gptq {bits}-bit g128, blocks 0:26 + tail distillation ({how})", tune)
        if args.control:
            row(f"original + the same tail fine-tune ({how})",
                lambda: tune(q=MODEL, pq=orig, out=root / "original-tuned"))

    def instruct():
        from tests.tune.instruct_set import build_play_questions

        data = build_play_questions(root / "plays.jsonl")
        cfg = FinetuneConfig(train="last:4", lm_head=True, data=str(data), format="alpaca", template="chat",
                             steps=args.instruct_steps, batch_size=8, seqlen=128, lr=args.lr, eval_fraction=0.1)
        r = finetune(load_model(root / f"q{min(args.bits)}"), cfg, root / "instruct-tuned", progress=bar)
        return {**r.evaluation, "train_seconds": r.stats.seconds, "tokens": r.stats.tokens, "seconds": r.seconds}

    row(f"instruction path (gptq {min(args.bits)}-bit model, play questions)", instruct)


if __name__ == "__main__":
    main()
