"""Calibration data in and out of domain: GPTQ of the default model calibrated on each CALIB
(one corpus or a weighted mix), against RTN and the original, scored on the held-out split of
every corpus the calibrations draw from and on Moby-Dick (``moby:eval``), which none of them uses.

For each corpus: perplexity, increase over the original, and that increase as a share of RTN's.
Resumable: finished rows are kept in ROOT/results.json; checkpoints in ROOT/<row>/ (``--keep``
keeps them, else each is deleted once scored).

    python bench/calib_mix.py --root runs/bench/calib_mix --bits 4 --max-tokens 16384 \\
        --calib shakespeare:calib --calib 'shakespeare:calib:0.25,brown:calib:0.5,sotu:calib:0.25'
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import llmshrink as ls
from llmshrink.eval.run import evaluate_perplexity

MODEL = "smollm2-135m"
CORPORA = ("shakespeare:eval", "brown:eval", "sotu:eval", "moby:eval")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="runs/bench/calib_mix")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=16384, help="score the first N tokens of each corpus")
    ap.add_argument("--calib", action="append", default=[], help="a --calib value (repeat for each row)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints")
    ap.add_argument("--have", action="append", default=[], help="CALIB=DIR: a checkpoint already made with "
                    "these --bits/--group-size and that --calib (scored, never deleted)")
    args = ap.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "results.json"
    res = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    res.update(model=MODEL, machine=f"{platform.machine()}, {platform.processor() or 'cpu'}", corpora=CORPORA,
               max_tokens=args.max_tokens)
    rows = res["rows"]

    def save():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=2) + "\n")
        tmp.replace(path)

    def score(model) -> dict:
        lm = ls.load_model(model)
        return {c: evaluate_perplexity(lm, ls.EvalConfig(data=c, max_tokens=args.max_tokens))["perplexity"]
                for c in CORPORA}

    def row(name, make):
        if name not in rows:
            t0 = time.perf_counter()
            model, info = make()
            info["quantize_s"] = round(time.perf_counter() - t0, 1)
            rows[name] = {**info, "perplexity": score(model)}
            if model != MODEL and not args.keep and not info.get("made_before"):
                shutil.rmtree(model, ignore_errors=True)
            save()
        print(name, json.dumps(rows[name]), flush=True)

    have = dict(h.rsplit("=", 1) for h in args.have)

    def quantized(method: str, calib: str | None):
        def make():
            if method == "gptq" and calib in have:
                return have[calib], {"method": method, "bits": args.bits, "group_size": args.group_size,
                                     "calib": calib, "made_before": True}
            out = root / f"{method}-w{args.bits}g{args.group_size}-{len(rows)}"
            cfg = ls.QuantConfig(bits=args.bits, group_size=args.group_size, method=method)
            ls.quantize(MODEL, out, cfg, calib=ls.CalibConfig(data=calib or "shakespeare:calib"), overwrite=True)
            return str(out), {"method": method, "bits": args.bits, "group_size": args.group_size, "calib": calib}
        return make

    row("original", lambda: (MODEL, {"method": "none"}))
    row(f"rtn w{args.bits}g{args.group_size}", quantized("rtn", None))
    for calib in args.calib:
        row(f"gptq w{args.bits}g{args.group_size} calib={calib}", quantized("gptq", calib))
    print(table(res))


def table(res: dict) -> str:
    rows = res["rows"]
    orig = rows["original"]["perplexity"]
    rtn = next(r for n, r in rows.items() if n.startswith("rtn"))["perplexity"]
    head = "| row | " + " | ".join(f"{c} ppl | +incr (x RTN)" for c in res["corpora"]) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(res["corpora"])]
    for name, r in rows.items():
        cells = []
        for c in res["corpora"]:
            p = r["perplexity"][c]
            share = (p - orig[c]) / (rtn[c] - orig[c]) if name != "original" else 0.0
            cells += [f"{p:.3f}", f"+{p - orig[c]:.3f} ({share:.2f}x)"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
