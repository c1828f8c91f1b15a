"""llmshrink's GPTQ against GPTQModel on the default model, in one run, same windows and settings.

    bash bench/peers/setup.sh                 # once: the peers' environment (GPTQModel)
    python bench/gptq_peers.py [--configs 4:128,3:128] [--interop-configs 4:128] [--interop-tokens 8192]

For each config (bits:group_size, symmetric, act-order, damp 0.01, 128 x 512 calibration
tokens of shakespeare:calib, seed 0), in this order and one at a time, so timings do not
overlap: llmshrink GPTQ (default and --no-mse), llmshrink RTN, GPTQModel GPTQ (each a fresh process, timed from start
to exit, peak RSS from the kernel); then llmshrink's evaluator on shakespeare:eval for the
original model and every checkpoint. Interop: each tool's checkpoint loaded by the other tool's
loader, scored on the first ``--interop-tokens`` tokens (GPTQModel's CPU kernel is slow).

PEER_PYTHON names the peers' interpreter if it is not bench/peers/.venv's. Results go to OUT/results.json step by step (a rerun skips finished steps; --fresh starts over)
and a Markdown table is printed for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER_PY = Path(os.environ.get("PEER_PYTHON", ROOT / "bench" / "peers" / ".venv" / "bin" / "python"))


def run(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` to completion; wall seconds, peak RSS (MiB) and its last JSON line, if any."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=f, text=True, cwd=ROOT)
        out = p.stdout.read()
        _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed ({os.waitstatus_to_exitcode(status)}): {' '.join(cmd)}; see {log}")
    last = [line for line in out.splitlines() if line.startswith("{")]
    return {"wall_seconds": wall, "peak_rss_mb": usage.ru_maxrss / 1024, **(json.loads(last[-1]) if last else {})}


def steps(out: Path, fresh: bool):
    """The output folder, the results so far (OUT/results.json) and ``step(key, cmd)``, which runs
    ``cmd`` with :func:`run` unless ``key`` is done, saving the results after each."""
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}

    def step(key: str, cmd: list[str]) -> dict:
        if key not in results:
            print(f"[{time.strftime('%H:%M:%S')}] {key}: {' '.join(cmd)}", file=sys.stderr, flush=True)
            results[key] = run(cmd, out / f"{key.replace('/', '__')}.log")
            tmp = res_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(results, indent=2))
            tmp.replace(res_path)
        return results[key]

    return out, results, step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--configs", default="4:128,3:128")
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--interop-tokens", type=int, default=8192)
    ap.add_argument("--interop-configs", default="4:128", help="configs whose checkpoints cross loaders")
    ap.add_argument("--out", default="runs/bench/gptq_peers")
    ap.add_argument("--fresh", action="store_true")
    args = ap.parse_args()
    if not PEER_PY.exists():
        raise SystemExit("no peers' environment: run `bash bench/peers/setup.sh` first")
    out, results, step = steps(ROOT / args.out, args.fresh)
    llmshrink = [sys.executable, "-m", "llmshrink"]

    calib = ["--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen)]
    configs = [tuple(int(x) for x in c.split(":")) for c in args.configs.split(",")]
    # 1. quantize, one process at a time (the timed part)
    for bits, gs in configs:
        tag = f"{bits}b_g{gs}"
        grid = ["--bits", str(bits), "--group-size", str(gs)]
        for name, extra in _ours(tag).items():
            d = out / name
            if f"quantize/{name}" not in results and d.exists():
                shutil.rmtree(d)
            step(f"quantize/{name}", [*llmshrink, "quantize", args.model, "--out", str(d), *extra, *grid, *calib])
        d = out / f"gptqmodel_{tag}"
        if f"quantize/gptqmodel_{tag}" not in results and d.exists():
            shutil.rmtree(d)
        step(f"quantize/gptqmodel_{tag}",
             [str(PEER_PY), "bench/peers/gptqmodel_run.py", "quantize", "--model", args.model, "--out", str(d),
              *grid, *calib])
    # 2. perplexity on shakespeare:eval, all by llmshrink's evaluator
    step("eval/original", [*llmshrink, "eval", args.model, "--json"])
    for bits, gs in configs:
        tag = f"{bits}b_g{gs}"
        for name in (*_ours(tag), f"gptqmodel_{tag}"):
            step(f"eval/{name}", [*llmshrink, "eval", str(out / name), "--json"])
    # 3. interop on the first N tokens: each checkpoint through both loaders
    n = str(args.interop_tokens)
    interop = [tuple(int(x) for x in c.split(":")) for c in args.interop_configs.split(",")]
    for bits, gs in interop:
        tag = f"{bits}b_g{gs}"
        for name in (f"llmshrink_gptq_{tag}", f"gptqmodel_{tag}"):
            step(f"interop/{name}/llmshrink", [*llmshrink, "eval", str(out / name), "--max-tokens", n, "--json"])
            step(f"interop/{name}/gptqmodel",
                 [str(PEER_PY), "bench/peers/gptqmodel_run.py", "eval", str(out / name), "--max-tokens", n])
    print(report(results, configs, interop, args))


def _ours(tag: str) -> dict[str, list[str]]:
    """llmshrink's rows: name -> extra arguments of ``llmshrink quantize``."""
    return {f"llmshrink_gptq_{tag}": ["--method", "gptq", "--no-mse"], f"llmshrink_gptq_mse_{tag}": ["--method", "gptq"],
            f"llmshrink_rtn_{tag}": ["--method", "rtn", "--no-mse"]}


def report(results: dict, configs, interop, args) -> str:
    base = results["eval/original"]["perplexity"]
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} CPU cores; calibration {args.nsamples} x "
             f"{args.seqlen} tokens of shakespeare:calib (seed 0), sym, act-order, damp 0.01; "
             f"eval: shakespeare:eval ({results['eval/original']['tokens']} tokens); original perplexity {base:.4f}",
             "", "| config | tool | perplexity | increase | increase vs GPTQModel | quantize wall s | "
             "ratio | peak RSS MiB | ratio |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for bits, gs in configs:
        tag = f"{bits}b_g{gs}"
        peer_q, peer_e = results[f"quantize/gptqmodel_{tag}"], results[f"eval/gptqmodel_{tag}"]
        peer_inc = peer_e["perplexity"] - base
        rows = {f"gptqmodel_{tag}": f"GPTQModel {peer_q.get('version', '')}",
                f"llmshrink_gptq_{tag}": "llmshrink GPTQ --no-mse",
                f"llmshrink_gptq_mse_{tag}": "llmshrink GPTQ (default: H-weighted MSE search)",
                f"llmshrink_rtn_{tag}": "llmshrink RTN (min/max grid)"}
        for name, label in rows.items():
            q, e = results[f"quantize/{name}"], results[f"eval/{name}"]
            inc = e["perplexity"] - base
            lines.append(f"| {bits}-bit g{gs} | {label} | {e['perplexity']:.3f} | {inc:+.3f} | {inc / peer_inc:.2f}x | "
                         f"{q['wall_seconds']:.0f} | {q['wall_seconds'] / peer_q['wall_seconds']:.2f} | "
                         f"{q['peak_rss_mb']:.0f} | {q['peak_rss_mb'] / peer_q['peak_rss_mb']:.2f} |")
    lines += ["", f"interop (first {args.interop_tokens} tokens of shakespeare:eval):", "",
              "| checkpoint | perplexity, maker's loader | perplexity, other loader | difference |",
              "|---|---:|---:|---:|"]
    for bits, gs in interop:
        tag = f"{bits}b_g{gs}"
        for name, maker, other in ((f"llmshrink_gptq_{tag}", "llmshrink", "gptqmodel"),
                                   (f"gptqmodel_{tag}", "gptqmodel", "llmshrink")):
            a = results[f"interop/{name}/{maker}"]["perplexity"]
            b = results[f"interop/{name}/{other}"]["perplexity"]
            lines.append(f"| {name} ({maker} → {other}) | {a:.4f} | {b:.4f} | {100 * (b - a) / a:+.2f}% |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
