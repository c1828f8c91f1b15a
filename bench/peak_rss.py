"""Run a command as a child process and report its wall time and peak resident memory.

Peak RSS comes from the kernel's accounting of the finished child (``getrusage(RUSAGE_CHILDREN)``,
the same figure ``wait4`` gives), so imports, loading and saving are all included.

    python bench/peak_rss.py -- llmshrink -q quantize smollm2-135m --bits 4 --group-size 128 --out DIR
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("give the command to run after --")
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, stdout=subprocess.DEVNULL)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"command": cmd, "rc": rc, "wall_seconds": round(time.perf_counter() - t0, 1),
                      "peak_rss_mib": round(peak, 1)}))
    return rc


if __name__ == "__main__":
    sys.exit(main())
