"""llmshrink's GPTQ GGUF files against llama.cpp's own quantizer, all scored by llama.cpp.

From the default model: llmshrink writes F16 and GPTQ-solved Q4_0 / Q4_1 / Q8_0 GGUF files;
llama.cpp (``llama_model_quantize`` through llama-cpp-python) makes Q4_0 / Q4_1 / Q8_0 from our
F16 file, with the embedding at Q8_0 like ours (and, for Q4_0, also with llama.cpp's default
tensor types), and with an importance matrix (the mean squared input of every linear layer over
the same calibration windows GPTQ uses; what ``llama-imatrix`` computes). Every file is then
evaluated by llama.cpp (its tokenizer, its logits) on the same ``shakespeare:eval`` windows,
and transformers' perplexity of the original model is recorded beside them.

With ``--mixes``, the llama.cpp K-quant mixes instead (``q4_k_m`` and so on): llmshrink's file
(each tensor typed as llama-quantize types it, GPTQ solved on every type's grid) against
llama.cpp's from our F16 with its default types, without and with the importance matrix; rows in
runs/bench/gguf-k/results.json.

With ``--score NAME=FILE``, a GGUF file another tool made (AutoRound's export,
``bench/peers/autoround_gguf.py``) is scored beside them as the row NAME.

Resumable: finished rows are kept in the results file; delete it to start over.

    python bench/gguf_vs_llamacpp.py [--nsamples 128] [--max-tokens N] [--mixes q4_k_m,q3_k_m,...]
        [--score 'AutoRound q4_k_m (iters 0)=runs/ar/q4km-i0/model-Q4_K_M.gguf']
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from llmshrink.data.calib import CalibConfig, calibration_windows
from llmshrink.eval.config import EvalConfig
from llmshrink.eval.llamacpp import load_llamacpp
from llmshrink.eval.run import evaluate_perplexity
from llmshrink.exporters.config import GGUFConfig
from llmshrink.exporters.gguf import _tensor_names
from llmshrink.exporters.llamacpp_quant import llama_quantize as lq
from llmshrink.jobs.export import export_gguf
from llmshrink.models.load import load_model
from llmshrink.quant.importance import input_importance

ROOT = Path("runs/bench/gguf")
OURS = ("q4_0", "q4_1", "q8_0")
# row name -> (llama.cpp ftype, token embedding type or None for llama.cpp's default, imatrix?)
THEIRS = {
    "llama.cpp q4_0": ("MOSTLY_Q4_0", "Q8_0", False),
    "llama.cpp q4_0 + imatrix": ("MOSTLY_Q4_0", "Q8_0", True),
    "llama.cpp q4_1": ("MOSTLY_Q4_1", "Q8_0", False),
    "llama.cpp q4_1 + imatrix": ("MOSTLY_Q4_1", "Q8_0", True),
    "llama.cpp q8_0": ("MOSTLY_Q8_0", "Q8_0", False),
    "llama.cpp q4_0 (its default tensor types)": ("MOSTLY_Q4_0", None, False),
}


def _save(path: Path, rec: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=2) + "\n")
    tmp.replace(path)


def importance(lm, calib: CalibConfig) -> dict[str, np.ndarray]:
    """Mean squared input per column of every block linear, by GGUF tensor name (llama-imatrix's
    statistic), from the library's block-by-block pass on the calibration windows GPTQ uses."""
    stats = input_importance(lm.model, lm.arch, calibration_windows(lm.tokenizer, calib), batch_size=calib.batch_size)
    gguf_name = _tensor_names(lm)
    return {gguf_name(f"{n}.weight"): m.numpy() for n, (m, _rows) in stats.items()}


def llama_quantize(src: Path, dst: Path, ftype: str, embed: str | None, imatrix: dict | None) -> None:
    lq(src, dst, ftype.removeprefix("MOSTLY_").lower(), imatrix, embed_type=embed, nthread=2)


def main() -> None:
    global ROOT, OURS, THEIRS
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="shakespeare:eval")
    ap.add_argument("--nsamples", type=int, default=CalibConfig.nsamples)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--mixes", default=None, help="comma-separated llama.cpp K mixes to compare instead")
    ap.add_argument("--score", action="append", default=[], metavar="NAME=FILE",
                    help="a GGUF file another tool made, scored as the row NAME")
    args = ap.parse_args()
    if args.mixes:
        ROOT = Path("runs/bench/gguf-k")
        OURS = tuple(args.mixes.split(","))
        THEIRS = {}
        for m in OURS:
            THEIRS[f"llama.cpp {m}"] = (f"MOSTLY_{m.upper()}", None, False)
            THEIRS[f"llama.cpp {m} + imatrix"] = (f"MOSTLY_{m.upper()}", None, True)
    ROOT.mkdir(parents=True, exist_ok=True)
    path = ROOT / "results.json"
    res = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    res.update(model=args.model, machine=platform.machine(), data=args.data, nsamples=args.nsamples,
               max_tokens=args.max_tokens)
    rows = res["rows"]
    calib = CalibConfig(nsamples=args.nsamples)
    ecfg = EvalConfig(data=args.data, max_tokens=args.max_tokens)
    lm = None

    def model():
        nonlocal lm
        if lm is None:
            lm = load_model(args.model)
        return lm

    if "transformers (original)" not in rows:
        r = evaluate_perplexity(model(), ecfg)
        rows["transformers (original)"] = {"perplexity": r["perplexity"], "tokens": r["tokens"]}
        _save(path, res)
    f16 = ROOT / "f16.gguf"
    if not f16.exists():
        export_gguf(model(), GGUFConfig(type="f16"), f16)
    imat = ROOT / "imatrix.npz"
    if not imat.exists():
        np.savez(imat, **importance(model(), calib))
    with np.load(imat, allow_pickle=False) as z:
        imatrix = {k: z[k] for k in z.files}

    def ours(t: str) -> Path:
        nonlocal lm
        f = ROOT / f"gptq-{t}.gguf"
        if not f.exists():
            lm = None  # GPTQ rewrites the weights it solves: start each export from the original
            t0 = time.perf_counter()
            export_gguf(model(), GGUFConfig(type=t), f, calib=calib)
            res.setdefault("export_seconds", {})[t] = time.perf_counter() - t0
            _save(path, res)
            lm = None
        return f

    def theirs(name: str) -> Path:
        ftype, embed, use_imatrix = THEIRS[name]
        f = ROOT / (name.replace(" ", "_").replace("+", "").replace("(", "").replace(")", "").replace(":", "")
                    + ".gguf")
        if not f.exists():
            llama_quantize(f16, f, ftype, embed, imatrix if use_imatrix else None)
        return f

    # Pairs first (ours, then llama.cpp's from the same F16), so a cut-short run still compares.
    order = [("llmshrink f16", lambda: f16)]
    for t in OURS:
        order += [(f"llmshrink gptq {t}", lambda t=t: ours(t)), (f"llama.cpp {t}", lambda t=t: theirs(f"llama.cpp {t}"))]
    order += [(n, lambda n=n: theirs(n)) for n in THEIRS if n not in dict(order)]
    order += [(n, lambda f=f: Path(f)) for n, _, f in (s.partition("=") for s in args.score)]
    for name, make in order:
        if name in rows:
            continue
        f = make()
        lc = load_llamacpp(f, n_ctx=ecfg.seqlen)
        r = evaluate_perplexity(lc, ecfg)
        rows[name] = {"perplexity": r["perplexity"], "tokens": r["tokens"], "size": f.stat().st_size,
                      "bits_per_weight": 8 * f.stat().st_size / r["parameters"], "parameters": r["parameters"],
                      "eval_seconds": r["eval_seconds"]}
        _save(path, res)
        print(name, rows[name], flush=True)
    print(table(res))


def table(res: dict) -> str:
    rows = res["rows"]
    base = rows["llmshrink f16"]["perplexity"]
    lines = ["| file | size MB | bits/weight | perplexity | increase over F16 |", "|---|---:|---:|---:|---:|"]
    for name, r in rows.items():
        if "size" not in r:
            lines.append(f"| {name} | | | {r['perplexity']:.3f} | |")
            continue
        lines.append(f"| {name} | {r['size'] / 1e6:.1f} | {r['bits_per_weight']:.2f} | {r['perplexity']:.3f} | "
                     f"{r['perplexity'] - base:+.3f} |")
    for t in OURS:
        ours = rows.get(f"llmshrink gptq {t}")
        for other in (f"llama.cpp {t}", f"llama.cpp {t} + imatrix"):
            theirs = rows.get(other)
            if ours and theirs:
                lines.append(f"\n{t} increase ratio (llmshrink GPTQ / {other}): "
                             f"{(ours['perplexity'] - base) / (theirs['perplexity'] - base):.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
