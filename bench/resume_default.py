"""Kill ``llmshrink quantize`` of the default model after block 15 and resume it.

Runs the quantization once uninterrupted (the reference), once SIGKILLed as soon as its resume
point says block 15 is finished, and once more to resume; prints the times and whether every
output file is byte-identical to the reference (timings in the JSON records aside).

    python bench/resume_default.py --root runs/resume --bits 4 --group-size 128
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from byte_identical import _strip  # noqa: E402  (the same timing fields masked)


def _digests(out: Path) -> dict[str, str]:
    digests = {}
    for p in sorted(out.iterdir()):
        data = p.read_bytes()
        if p.suffix in (".json", ".jsonl"):
            lines = data.decode().splitlines() if p.suffix == ".jsonl" else [data.decode()]
            data = json.dumps([_strip(json.loads(x)) for x in lines if x.strip()], sort_keys=True).encode()
        digests[p.name] = hashlib.sha256(data).hexdigest()
    return digests


def _done(state: Path) -> int:
    from safetensors import safe_open

    hidden = state / "hidden.safetensors"
    if not hidden.is_file():
        return 0
    try:
        with safe_open(str(hidden), "pt") as fh:
            return int((fh.metadata() or {}).get("done", 0))
    except Exception:  # being replaced at this moment: read again
        return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", default="runs/resume")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--bits", default="4")
    p.add_argument("--group-size", default="128")
    p.add_argument("--kill-after", type=int, default=15, help="kill once this block is finished")
    args = p.parse_args()
    root = Path(args.root)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)

    def argv(out: Path) -> list[str]:
        return [sys.executable, "-m", "llmshrink", "-q", "quantize", args.model, "--out", str(out), "--bits",
                args.bits, "--group-size", args.group_size]

    t0 = time.perf_counter()
    subprocess.run(argv(root / "ref"), check=True)
    full = time.perf_counter() - t0
    out, state = root / "q", root / ".q.partial"
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv(out))
    while _done(state) < args.kill_after + 1 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = time.perf_counter() - t0
    done = _done(state)
    t0 = time.perf_counter()
    subprocess.run(argv(out), check=True)
    resumed = time.perf_counter() - t0
    ref, got = _digests(root / "ref"), _digests(out)
    print(f"| run | seconds |\n|---|---:|\n| uninterrupted | {full:.0f} |\n| killed after block {done - 1} | "
          f"{killed:.0f} |\n| resumed | {resumed:.0f} |")
    print(f"\nfiles identical: {ref == got} ({', '.join(sorted(ref))}); model.safetensors sha256 "
          f"{got['model.safetensors'][:16]}")
    return 0 if ref == got else 1


if __name__ == "__main__":
    sys.exit(main())
