"""Run ``llmshrink quantize`` (or ``export``) in this process with each phase timed and the
resident memory sampled, to say where a big model's time and memory go.

Phases are the library functions the driver calls, wrapped here (the library itself is
unchanged): reading a block's weights from disk, capturing the calibration inputs, the
Hessians, the GPTQ solve, the RTN baseline it is compared with, packing, the resume point's
writes and the final save; the forward passes are the rest of the block loop. The resident
memory is sampled every 50 ms (and the kernel's peak read at the end), with the phase it was in.

    python bench/big_model.py --out runs/big/llama2-7b-shaped
    python bench/big_quantize.py --json runs/big/q4.json -- quantize runs/big/llama2-7b-shaped \\
        --out runs/big/q4 --bits 4 --group-size 128 --nsamples 8 --seqlen 512
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import resource
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

PHASES = {  # phase -> (module, attribute) wrapped
    "read block": ("llmshrink.models.lazy", "LazyBlocks.materialize"),
    "load (embedding, head)": ("llmshrink.models.lazy", "load_lazy"),
    "capture inputs": ("llmshrink.blockwise", "capture_block_inputs"),
    "hessian": ("llmshrink.quant.driver", "accumulate_hessian"),
    "gptq solve": ("llmshrink.quant.driver", "gptq_quantize"),
    "rtn baseline": ("llmshrink.quant.driver", "rtn_quantize"),
    "pack": ("llmshrink.quant.qlinear", "QuantLinear.from_result"),
    "resume point": ("llmshrink.jobs.resume", "BlockState.save"),
    "save checkpoint": ("llmshrink.jobs.quantize", "save_quantized"),
}


class Meter:
    def __init__(self):
        self.seconds = defaultdict(float)
        self.peak = defaultdict(int)  # phase -> highest RSS sampled in it (bytes)
        self.stack = ["other"]
        self.timeline: list[tuple[float, str, int]] = []
        self.t0 = time.perf_counter()
        self._stop = threading.Event()

    def rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize()

    def sample(self) -> None:
        last = 0.0
        while not self._stop.wait(0.05):
            r, phase = self.rss(), self.stack[-1]
            self.peak[phase] = max(self.peak[phase], r)
            now = time.perf_counter() - self.t0
            if now - last >= 5:
                self.timeline.append((round(now, 1), phase, r))
                last = now

    @contextlib.contextmanager
    def phase(self, name: str):
        if self.stack[-1] == name:  # nested call of the same phase: counted once
            yield
            return
        self.stack.append(name)
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t
            self.stack.pop()
            if len(self.stack) > 1:  # time inside a nested phase is not its parent's
                self.seconds[self.stack[-1]] -= time.perf_counter() - t


def wrap(meter: Meter, name: str, module: str, attr: str) -> None:
    import importlib

    mod = importlib.import_module(module)
    owner, _, leaf = attr.rpartition(".")
    target = getattr(mod, owner) if owner else mod
    if not hasattr(target, leaf):
        return
    fn = inspect.getattr_static(target, leaf)
    raw = fn.__func__ if isinstance(fn, classmethod) else fn

    @functools.wraps(raw)
    def timed(*a, **kw):
        with meter.phase(name):
            return raw(*a, **kw)

    setattr(target, leaf, classmethod(timed) if isinstance(fn, classmethod) else timed)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the figures here too")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="llmshrink's arguments, after --")
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    meter = Meter()
    for name, (module, attr) in PHASES.items():
        wrap(meter, name, module, attr)
    threading.Thread(target=meter.sample, daemon=True).start()
    from llmshrink.cli import main as cli

    t0 = time.perf_counter()
    rc = cli(["-q", *cmd])
    wall = time.perf_counter() - t0
    meter._stop.set()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    import torch

    gpu = round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None
    named = sum(v for k, v in meter.seconds.items() if k != "other")
    out = {"command": cmd, "rc": rc, "wall_seconds": round(wall, 1), "peak_rss_gib": round(peak / 2**30, 2), "peak_gpu_gib": gpu,
           "phases": {k: {"seconds": round(v, 1), "peak_rss_gib": round(meter.peak.get(k, 0) / 2**30, 2)}
                      for k, v in sorted(meter.seconds.items(), key=lambda kv: -kv[1])},
           "forward and the rest": round(wall - named, 1), "timeline": meter.timeline}
    print(json.dumps({k: v for k, v in out.items() if k != "timeline"}, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
