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

import shutil
import time
from pathlib import Path

from autoround_gguf import finish, parser, source_and_windows


def _flatten(out: Path) -> None:
    """AutoRound 0.16 writes into ``OUT/<model>-w<bits>g<group>/``: move that folder's files up,
    so that ``OUT`` is the checkpoint."""
    if (out / "config.json").is_file():
        return
    inner = [d for d in out.iterdir() if d.is_dir() and (d / "config.json").is_file()]
    if len(inner) != 1:
        raise SystemExit(f"{out}: AutoRound wrote no checkpoint folder")
    for f in inner[0].iterdir():
        shutil.move(str(f), out / f.name)
    inner[0].rmdir()


def main() -> None:
    ap = parser()
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--asym", action="store_true")
    args = ap.parse_args()
    from auto_round import AutoRound

    src, dataset = source_and_windows(args)
    t0 = time.perf_counter()
    kw = {} if args.iters is None else {"iters": args.iters}
    ar = AutoRound(src, bits=args.bits, group_size=args.group_size, sym=not args.asym, dataset=dataset,
                   nsamples=len(dataset), seqlen=args.seqlen, device_map="cpu", **kw)
    ar.quantize_and_save(str(args.out), format="auto_gptq")
    _flatten(Path(args.out))
    finish(args, t0, bits=args.bits, group_size=args.group_size, out=str(args.out))


if __name__ == "__main__":
    main()
