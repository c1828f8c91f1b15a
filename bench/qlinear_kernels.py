"""CPU kernels of packed GPTQ layers: generation latency and prefill throughput.

    python bench/qlinear_kernels.py CHECKPOINT_DIR [--model smollm2-135m] [--new-tokens 32] [--prefill 512]

Loads the original model and the 4-bit checkpoint, then times, one after the other in this
process: greedy generation of ``--new-tokens`` tokens after a short prompt (ms/token, KV cache
on) and one forward pass over ``--prefill`` tokens, for the original float32 model and for the
checkpoint with each kernel of ``QuantLinear``: ``dequant`` (unpack + dequantize every call),
``int4`` (PyTorch's int4 CPU kernel), ``auto`` (the default: int4 for a few rows, dequant
otherwise) and ``dequant`` with the dequantized weights cached (memory of the float model).
Prints a Markdown table with ratios to the original model.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from llmshrink.models.load import load_model
from llmshrink.quant.qlinear import QuantLinear, dequantized


def _time(fn, repeat: int) -> float:
    fn()  # warm-up (and the int4 kernel's one-off weight conversion)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    base = load_model(args.model)
    packed = load_model(args.checkpoint)
    prompt = base.tokenizer("To be, or not to be, that is the question:", return_tensors="pt")["input_ids"]
    long = torch.randint(0, len(base.tokenizer), (1, args.prefill))

    def gen(model):
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                           do_sample=False, pad_token_id=base.tokenizer.eos_token_id)

    def prefill(model):
        with torch.no_grad():
            model(long)

    def set_kernel(kernel: str) -> None:
        for m in packed.model.modules():
            if isinstance(m, QuantLinear):
                m.kernel = kernel

    rows = [("original float32", _time(lambda: gen(base.model), args.repeat),
             _time(lambda: prefill(base.model), args.repeat))]
    for label, kernel, cache in (("packed, dequant", "dequant", False), ("packed, int4", "int4", False),
                                 ("packed, auto (default)", "auto", False),
                                 ("packed, dequant cached", "dequant", True)):
        set_kernel(kernel)
        with dequantized(packed.model) if cache else contextlib.nullcontext():
            rows.append((label, _time(lambda: gen(packed.model), args.repeat),
                         _time(lambda: prefill(packed.model), args.repeat)))
    g0, p0 = rows[0][1], rows[0][2]
    print(f"| model / kernel | generation ms/token ({args.new_tokens} new) | ratio | "
          f"prefill {args.prefill} tokens ms | ratio |")
    print("|---|---:|---:|---:|---:|")
    for label, g, p in rows:
        print(f"| {label} | {1000 * g / args.new_tokens:.1f} | {g / g0:.2f} | {1000 * p:.0f} | {p / p0:.2f} |")


if __name__ == "__main__":
    main()
