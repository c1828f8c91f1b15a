"""Past GPTQ: llmshrink's methods against GPTQModel (with and without GPTQ v2 / GPTAQ) and Intel
AutoRound (its default tuning and its ``--iters 0``), in one run, on the same calibration windows,
every checkpoint scored by llmshrink's evaluator in domain and out of domain.

    bash bench/peers/setup.sh                 # once: the peers' environment (GPTQModel, AutoRound)
    python bench/past_gptq.py --configs 4:128,3:128,2:64 [--max-tokens 16384] [--rows ...]

For each config (bits:group_size, symmetric; 128 x 512 calibration tokens of shakespeare:calib,
seed 0), one process at a time, so that timings do not overlap, each timed from start to exit
with the peak RSS from the kernel: llmshrink ``rtn``, ``gptq``, ``gptaq`` and ``recon``;
GPTQModel GPTQ and GPTQ v2 (``gptaq`` alpha 0.25, its default); AutoRound (default: 200
iterations per block) and AutoRound ``--iters 0``. Then perplexity of the original model and
of every checkpoint, by llmshrink's evaluator, on the first ``--max-tokens`` tokens of
``shakespeare:eval`` (the calibration's own domain, held out) and of ``moby:eval``
(*Moby-Dick*: a novel, which no calibration reads). ``fisher35``: mixed precision
(``--target-bpw 3.5``, the config's bits unused). Each checkpoint's stored bits per weight (codes, zero points and
scales of its packed layers over their weights) is read from its files; the plot
OUT/ppl_vs_bpw.png shows perplexity against it for every row.

Results go to OUT/results.json step by step (a rerun skips finished steps; --fresh starts
over); checkpoints are deleted once scored unless --keep. A Markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
from pathlib import Path

from gptq_peers import PEER_PY, ROOT, steps

CORPORA = {"in": "shakespeare:eval", "out": "moby:eval"}
# row -> (label, command maker(bits, group_size, out dir) -> argv)
ROWS = {
    "rtn": ("llmshrink RTN", lambda llm, d: [*llm, "--method", "rtn"]),
    "gptq": ("llmshrink GPTQ", lambda llm, d: [*llm, "--method", "gptq"]),
    "gptaq": ("llmshrink GPTAQ", lambda llm, d: [*llm, "--method", "gptaq"]),
    "recon": ("llmshrink recon (GPTAQ + block-output tuning)", lambda llm, d: [*llm, "--method", "recon"]),
    "fisher35": ("llmshrink GPTQ, --target-bpw 3.5 (widths 2/3/4/8)",
                 lambda llm, d: [*llm, "--method", "gptq", "--target-bpw", "3.5"]),
    # the first --target-bpw (302cbe9): widths by each layer's relative output error; its rows stay in the table
    "mix35": ("llmshrink GPTQ, --target-bpw 3.5, widths by relative output error (302cbe9, replaced)", None),
    "gptqmodel": ("GPTQModel GPTQ", None),
    "gptqmodel_v2": ("GPTQModel GPTQ v2 (GPTAQ)", None),
    "autoround": ("AutoRound (200 iters)", None),
    "autoround_rtn": ("AutoRound --iters 0", None),
}


def _command(row: str, bits: int, gs: int, d: Path, args) -> list[str]:
    grid = ["--bits", str(bits), "--group-size", str(gs)]
    calib = ["--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen)]
    peer = [str(PEER_PY), "bench/peers/gptqmodel_run.py", "quantize", "--model", args.model, "--out", str(d), *grid,
            *calib]
    autoround = [str(PEER_PY), "bench/peers/autoround_gptq.py", "--model", args.model, "--out", str(d), *grid, *calib]
    if row == "gptqmodel":
        return peer
    if row == "gptqmodel_v2":
        return [*peer, "--gptaq", "0.25"]
    if row == "autoround":
        return autoround
    if row == "autoround_rtn":
        return [*autoround, "--iters", "0"]
    llm = [sys.executable, "-m", "llmshrink", "quantize", args.model, "--out", str(d), *grid, *calib]
    if ROWS[row][1] is None:
        raise SystemExit(f"row {row} was measured with an earlier build: check out 302cbe9 to run it again")
    return ROWS[row][1](llm, d)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--configs", default="4:128,3:128,2:64")
    ap.add_argument("--rows", default=",".join(ROWS), help="which rows, of: " + ", ".join(ROWS))
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--out", default="runs/bench/past_gptq")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--report", action="store_true", help="only print the table and draw the plot of the rows done")
    args = ap.parse_args()
    rows = args.rows.split(",")
    if any(r.startswith(("gptqmodel", "autoround")) for r in rows) and not PEER_PY.exists():
        raise SystemExit("no peers' environment: run `bash bench/peers/setup.sh` first")
    out, results, step = steps(ROOT / args.out, args.fresh)

    def evaluate(key: str, model: str) -> None:
        for where, corpus in CORPORA.items():
            step(f"eval/{key}/{where}", [sys.executable, "-m", "llmshrink", "eval", model, "--data", corpus,
                                         "--max-tokens", str(args.max_tokens), "--json", "--no-record"])

    configs = [tuple(int(x) for x in c.split(":")) for c in args.configs.split(",")]
    if args.report:
        print(report(results, configs, rows, args))
        plot(results, out / "ppl_vs_bpw.png")
        return
    evaluate("original", args.model)
    for bits, gs in configs:
        for row in rows:
            key = f"{row}_w{bits}g{gs}"
            d = out / key
            if f"quantize/{key}" not in results and d.exists():
                shutil.rmtree(d)
            step(f"quantize/{key}", _command(row, bits, gs, d, args))
            if f"bpw/{key}" not in results and d.is_dir():
                results[f"bpw/{key}"] = {"bpw": stored_bpw(d)}
                tmp = out / "results.tmp"
                tmp.write_text(json.dumps(results, indent=2))
                tmp.replace(out / "results.json")
            evaluate(key, str(d))
            if not args.keep:
                shutil.rmtree(d, ignore_errors=True)
    print(report(results, configs, rows, args))
    plot(results, out / "ppl_vs_bpw.png")


def stored_bpw(folder: Path) -> float:
    """Bits per weight that a GPTQ checkpoint's packed layers store: qweight, qzeros and scales
    over the layers' weights (``g_idx`` aside)."""
    from safetensors import safe_open

    size: dict[str, int] = {}
    weights = 0
    for shard in folder.glob("*.safetensors"):
        with safe_open(shard, "pt") as f:
            names = f.keys()
            for k in names:
                t = f.get_slice(k)
                n = math.prod(t.get_shape()) * {"I32": 4, "F16": 2, "BF16": 2, "F32": 4}.get(t.get_dtype(), 1)
                size[k] = n
                if k.endswith(".g_idx"):
                    weights += t.get_shape()[0] * f.get_slice(k.replace(".g_idx", ".scales")).get_shape()[1]
    packed = sum(n for k, n in size.items() if k.endswith((".qweight", ".qzeros", ".scales")))
    return 8 * packed / weights


def _bpw(results: dict, key: str, bits: int, gs: int) -> float:
    """A row's bits per weight: read from its checkpoint, or for a uniform row whose checkpoint
    was not read, what the default model's layers (in 576 or 1536, out 192 to 1536) store."""
    if f"bpw/{key}" in results:
        return results[f"bpw/{key}"]["bpw"]
    from llmshrink.quant.mix import stored_bits

    shapes = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
    return sum(stored_bits(bits, s, gs) for s in shapes) / sum(o * i for o, i in shapes)


def plot(results: dict, path: Path) -> None:
    """Perplexity against stored bits per weight, in and out of domain, one marker per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points: dict[str, list[tuple[float, float, float]]] = {}
    for key in results:
        if not key.startswith("quantize/"):
            continue
        name = key.split("/", 1)[1]
        row, _, cfg = name.rpartition("_w")
        bits, gs = (int(x) for x in cfg.split("g"))
        if f"eval/{name}/out" not in results or row not in ROWS:
            continue
        ppl = [results[f"eval/{name}/{w}"]["perplexity"] for w in CORPORA]
        points.setdefault(row, []).append((_bpw(results, name, bits, gs), *ppl))
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    for ax, (i, w) in zip(axes, enumerate(CORPORA), strict=True):
        for row, pts in sorted(points.items()):
            pts = sorted(p for p in pts if p[i + 1] < 200)  # RTN's 2- and 3-bit points would flatten the rest
            if pts:
                ax.plot([p[0] for p in pts], [p[i + 1] for p in pts], "o-", label=ROWS[row][0])
        ax.axhline(results[f"eval/original/{w}"]["perplexity"], color="grey", ls="--", lw=1, label="original")
        ax.set(xlabel="stored bits per weight (codes + zero points + scales)", ylabel="perplexity",
               title=f"{CORPORA[w]} ({'in' if w == 'in' else 'out of'} domain)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(results: dict, configs, rows, args) -> str:
    base = {w: results[f"eval/original/{w}"]["perplexity"] for w in CORPORA}
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} CPU cores; calibration {args.nsamples} x {args.seqlen} "
             f"tokens of shakespeare:calib (seed 0), symmetric; perplexity on the first {args.max_tokens} tokens of "
             f"{CORPORA['in']} (in domain) and {CORPORA['out']} (out of domain); original {base['in']:.3f} / "
             f"{base['out']:.3f}", "",
             "| config | method | bits/weight | in-domain ppl | increase | x RTN's | out-of-domain ppl | increase | x RTN's | "
             "x best peer's (out) | quantize wall s | peak RSS MiB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for bits, gs in configs:
        inc = {r: {w: results[f"eval/{r}_w{bits}g{gs}/{w}"]["perplexity"] - base[w] for w in CORPORA}
               for r in rows if f"eval/{r}_w{bits}g{gs}/out" in results}
        peers = [inc[r]["out"] for r in inc if r.startswith(("gptqmodel", "autoround"))]
        best = min(peers) if peers else None
        for r in inc:
            q = results[f"quantize/{r}_w{bits}g{gs}"]
            rtn = inc.get("rtn")
            cells = []
            for w in CORPORA:
                ppl = results[f"eval/{r}_w{bits}g{gs}/{w}"]["perplexity"]
                cells += [f"{ppl:.3f}", f"{inc[r][w]:+.3f}", f"{inc[r][w] / rtn[w]:.2f}" if rtn else "-"]
            vs = f"{inc[r]['out'] / best:.2f}" if best else "-"
            bpw = _bpw(results, f"{r}_w{bits}g{gs}", bits, gs)
            lines.append(f"| W{bits}g{gs} | {ROWS[r][0]} | {bpw:.3f} | {' | '.join(cells)} | {vs} | {q['wall_seconds']:.0f} | "
                         f"{q['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
