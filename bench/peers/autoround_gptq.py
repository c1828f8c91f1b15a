"""Intel AutoRound to a GPTQ checkpoint, on the same model and calibration windows as llmshrink's.

Runs inside the peers' environment (``bash bench/peers/setup.sh`` installs GPTQModel and
AutoRound beside llmshrink), so AutoRound calibrates on the very windows ``llmshrink quantize``
uses (128 x 512 tokens of ``shakespeare:calib`` by default):

    bench/peers/.venv/bin/python bench/peers/autoround_gptq.py --bits 3 --group-size 128 --out DIR            # its default tuning
    bench/peers/.venv/bin/python bench/peers/autoround_gptq.py --bits 3 --group-size 128 --iters 0 --out DIR  # its optimised RTN

Writes the checkpoint in the GPTQ format (``format="auto_gptq"``: ``quant_method: gptq``, which
llmshrink, transformers and GPTQModel load) and prints one JSON line: AutoRound's wall time
(model load included: AutoRound loads it itself) and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--asym", action="store_true")
    ap.add_argument("--iters", type=int, default=None, help="0: its optimised RTN; default: its own tuning (200)")
    ap.add_argument("--calib", default="shakespeare:calib")
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import auto_round
    from auto_round import AutoRound

    from llmshrink.data.calib import CalibConfig, calibration_windows
    from llmshrink.models.load import load_model, resolve_model_dir

    src = resolve_model_dir(args.model)
    tok = load_model(args.model).tokenizer
    windows = calibration_windows(tok, CalibConfig(data=args.calib, nsamples=args.nsamples, seqlen=args.seqlen))
    t0 = time.perf_counter()
    kw = {} if args.iters is None else {"iters": args.iters}
    ar = AutoRound(str(src), bits=args.bits, group_size=args.group_size, sym=not args.asym,
                   dataset=[w.unsqueeze(0) for w in windows], nsamples=len(windows), seqlen=args.seqlen,
                   device_map="cpu", **kw)
    ar.quantize_and_save(str(args.out), format="auto_gptq")
    secs = time.perf_counter() - t0
    print(json.dumps({"tool": "auto-round", "version": auto_round.__version__, "bits": args.bits,
                      "group_size": args.group_size, "iters": args.iters, "quantize_seconds": secs,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "out": str(args.out),
                      "windows": list(windows.shape)}), flush=True)


if __name__ == "__main__":
    main()
