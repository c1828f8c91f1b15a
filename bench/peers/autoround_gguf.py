"""Intel AutoRound's GGUF export, on the same model and calibration windows as llmshrink's.

Runs inside the peers' environment (``bash bench/peers/setup.sh``, which installs AutoRound
0.16.1), which also has llmshrink installed, so AutoRound calibrates on the very windows ``llmshrink export --type MIX`` uses (128 x 512
tokens of ``shakespeare:calib`` by default):

    bench/peers/.venv/bin/python bench/peers/autoround_gguf.py --type q4_k_m --iters 0 --out DIR
    bench/peers/.venv/bin/python bench/peers/autoround_gguf.py --type q4_k_m --out DIR   # its default tuning

Prints one JSON line: the .gguf file written, AutoRound's wall time (model load excluded, save
included) and the process's peak RSS. The file is scored by llama.cpp in llmshrink's own
environment (``bench/gguf_vs_llamacpp.py --autoround``).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    """The arguments AutoRound's runs share (``autoround_gptq.py`` adds its own)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--iters", type=int, default=None, help="0: its optimised RTN; default: its own tuning")
    ap.add_argument("--calib", default="shakespeare:calib")
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--out", type=Path, required=True)
    return ap


def source_and_windows(args) -> tuple[str, list]:
    """The model's folder and llmshrink's calibration windows, as AutoRound's dataset."""
    from llmshrink.data.calib import CalibConfig, calibration_windows
    from llmshrink.models.load import load_model, resolve_model_dir

    tok = load_model(args.model).tokenizer
    windows = calibration_windows(tok, CalibConfig(data=args.calib, nsamples=args.nsamples, seqlen=args.seqlen))
    return str(resolve_model_dir(args.model)), [w.unsqueeze(0) for w in windows]


def finish(args, t0: float, **fields) -> None:
    import auto_round

    print(json.dumps({"tool": "auto-round", "version": auto_round.__version__, "iters": args.iters,
                      "quantize_seconds": time.perf_counter() - t0,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "windows": [args.nsamples, args.seqlen], **fields}), flush=True)


def main() -> None:
    ap = parser()
    ap.add_argument("--type", default="q4_k_m", help="a llama.cpp mix AutoRound exports (gguf:TYPE)")
    args = ap.parse_args()
    from auto_round import AutoRound

    src, dataset = source_and_windows(args)
    t0 = time.perf_counter()
    kw = {} if args.iters is None else {"iters": args.iters}
    ar = AutoRound(src, scheme=f"gguf:{args.type}", dataset=dataset, nsamples=len(dataset), seqlen=args.seqlen,
                   device_map="cpu", **kw)
    ar.quantize_and_save(str(args.out), format=f"gguf:{args.type}")
    finish(args, t0, type=args.type, seconds=time.perf_counter() - t0,
           files=[str(f) for f in sorted(args.out.rglob("*.gguf"))])


if __name__ == "__main__":
    main()
