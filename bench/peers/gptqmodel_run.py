"""GPTQModel, driven on the same model, calibration windows and settings as llmshrink.

Runs inside the peers' environment (``bash bench/peers/setup.sh``), which also has llmshrink
installed so that both tools see the very same token windows:

    bench/peers/.venv/bin/python bench/peers/gptqmodel_run.py quantize --bits 4 --group-size 128 --out DIR
    bench/peers/.venv/bin/python bench/peers/gptqmodel_run.py quantize ... --gptaq 0.25   # GPTQ v2 (GPTAQ)
    bench/peers/.venv/bin/python bench/peers/gptqmodel_run.py eval DIR [--max-tokens N]

Each prints one JSON line. ``quantize`` reports its wall time (model load excluded, save
included, like ``llmshrink quantize``'s) and the process's peak RSS; ``eval`` loads a GPTQ
checkpoint, ours or GPTQModel's, with GPTQModel's ``gptq_torch`` backend (the one that reloads
widths the group size does not divide; ``--backend auto``: the one GPTQModel picks itself, as a
user's load does) and scores it on llmshrink's evaluation windows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def quantize(args) -> dict:
    import gptqmodel
    import torch
    from gptqmodel import GPTQModel, QuantizeConfig

    from llmshrink.data.corpora import load_corpus
    from llmshrink.data.windows import bos_id, sample_windows, tokenize_corpus
    from llmshrink.models.load import load_model, resolve_model_dir

    src = resolve_model_dir(args.model)
    tok = load_model(args.model).tokenizer
    stream = tokenize_corpus(load_corpus(args.calib), tok)
    windows = sample_windows(stream, args.nsamples, args.seqlen, seed=args.seed, bos=bos_id(tok))
    calib = [{"input_ids": w.unsqueeze(0), "attention_mask": torch.ones_like(w).unsqueeze(0)} for w in windows]
    extra = {"gptaq": {"alpha": args.gptaq}} if args.gptaq is not None else {}
    cfg = QuantizeConfig(bits=args.bits, group_size=args.group_size, sym=not args.asym, desc_act=args.act_order,
                         act_group_aware=False if args.act_order else None, damp_percent=args.damp,
                         true_sequential=True, **extra)
    model = GPTQModel.load(str(src), cfg)
    t0 = time.perf_counter()
    model.quantize(calib, batch_size=args.batch_size)
    model.save(args.out)
    secs = time.perf_counter() - t0
    return {"tool": "gptqmodel", "version": gptqmodel.__version__, "gptaq": args.gptaq, "quantize_seconds": secs, "peak_rss_mb": _rss_mb(), "out": args.out,
            "windows": list(windows.shape)}


def evaluate(args) -> dict:
    from gptqmodel import BACKEND, GPTQModel

    from llmshrink.data.corpora import load_corpus
    from llmshrink.data.windows import bos_id, tokenize_corpus
    from llmshrink.eval.perplexity import perplexity

    t0 = time.perf_counter()
    backend = BACKEND.TORCH if args.backend == "torch" else BACKEND.AUTO
    model = GPTQModel.load(args.dir, backend=backend, device="cpu")
    load_s = time.perf_counter() - t0
    tok = model.tokenizer
    tok = getattr(tok, "tokenizer", tok)
    stream = tokenize_corpus(load_corpus(args.data), tok, max_tokens=args.max_tokens)
    res = perplexity(model.model, stream, seqlen=args.seqlen, bos=bos_id(tok))
    # the width GPTQModel built each packed layer with (a mixed checkpoint's ``dynamic`` rules read)
    widths = {n: m.bits for n, m in model.model.named_modules() if hasattr(m, "qweight") and hasattr(m, "bits")}
    return {"tool": "gptqmodel", "dir": args.dir, "backend": args.backend, "perplexity": res.perplexity, "tokens": res.tokens,
            "load_seconds": load_s, "eval_seconds": time.perf_counter() - t0 - load_s, "widths": widths}


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quantize")
    q.add_argument("--model", default="smollm2-135m")
    q.add_argument("--out", required=True)
    q.add_argument("--bits", type=int, default=4)
    q.add_argument("--group-size", type=int, default=128)
    q.add_argument("--asym", action="store_true")
    q.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=True)
    q.add_argument("--damp", type=float, default=0.01)
    q.add_argument("--calib", default="shakespeare:calib")
    q.add_argument("--nsamples", type=int, default=128)
    q.add_argument("--seqlen", type=int, default=512)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--batch-size", type=int, default=8)
    q.add_argument("--gptaq", type=float, default=None, metavar="ALPHA",
                   help="GPTQ v2 (GPTAQ) with this alpha (GPTQModel's default: 0.25)")
    e = sub.add_parser("eval")
    e.add_argument("dir")
    e.add_argument("--data", default="shakespeare:eval")
    e.add_argument("--seqlen", type=int, default=512)
    e.add_argument("--max-tokens", type=int, default=None)
    e.add_argument("--backend", choices=["torch", "auto"], default="torch",
                   help="torch: gptq_torch (reads any group size); auto: GPTQModel's own choice, as a user's")
    args = ap.parse_args()
    print(json.dumps(quantize(args) if args.cmd == "quantize" else evaluate(args)), flush=True)


if __name__ == "__main__":
    main()
