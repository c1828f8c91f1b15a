"""Loading and perplexity timings for the default model, each in a fresh process.

    python bench/load_eval.py [--model smollm2-135m] [--max-tokens N]

Rows: transformers' own GGUF load (what a user does without llmshrink), llmshrink's load from
its safetensors cache, and ``llmshrink eval`` on ``shakespeare:eval``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

GGUF_LOAD = """
import time, torch
t = time.perf_counter()
from transformers import AutoModelForCausalLM, AutoTokenizer
from llmshrink.models.zoo import get_alias
p = get_alias({model!r}).gguf_path()
AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32)
print(time.perf_counter() - t)
"""

CACHED_LOAD = """
import time
t = time.perf_counter()
from llmshrink import load_model
load_model({model!r})
print(time.perf_counter() - t)
"""


def _seconds(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    _seconds(CACHED_LOAD.format(model=args.model))  # make sure the cache exists and files are warm
    gguf = min(_seconds(GGUF_LOAD.format(model=args.model)) for _ in range(args.repeats))
    cached = min(_seconds(CACHED_LOAD.format(model=args.model)) for _ in range(args.repeats))
    cmd = ["llmshrink", "--quiet", "eval", args.model, "--data", "shakespeare:eval", "--json"]
    if args.max_tokens:
        cmd += ["--max-tokens", str(args.max_tokens)]
    t0 = time.perf_counter()
    rec = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    wall = time.perf_counter() - t0

    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}; python {platform.python_version()}")
    print(f"command: {' '.join(cmd)}\n")
    print(f"| what | seconds (best of {args.repeats}, fresh process, imports included) | ratio |")
    print("|---|---:|---:|")
    print(f"| transformers: load the GGUF (dequantize every tensor) | {gguf:.2f} | 1.00 |")
    print(f"| llmshrink: load from the safetensors cache | {cached:.2f} | {cached / gguf:.2f} |")
    print()
    print("| model | data | tokens scored | perplexity | eval s | wall s (whole command) | tokens/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    print(f"| {rec['model']} | {rec['data']} | {rec['tokens']} | {rec['perplexity']:.4f} | "
          f"{rec['eval_seconds']:.1f} | {wall:.1f} | {rec['tokens'] / rec['eval_seconds']:.0f} |")


if __name__ == "__main__":
    main()
