"""Fault injection: run a command, SIGKILL it at seeded random moments, run it again (resuming)
after each kill, and compare the final outputs with an uninterrupted run's, byte for byte.

After every kill, whatever exists under a final output name must already be complete (equal to
the uninterrupted run's): outputs appear atomically. Timings recorded in JSON files (keys with
``seconds`` in their name), the workspace's own path, and the digests of settings that hold it
(a recipe's stage ``hash``) are the only things masked.

``python -m tests.faults --kills 20`` prints the table for every command; the tests run a few
kills per command by default and 10 in the slow tier.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Command:
    name: str
    argv: Callable[[Path], list[str]]  # workspace -> the command line (run again as it is to resume)
    outputs: tuple[str, ...]  # final outputs, relative to the workspace
    state: Callable[[Path], bool]  # workspace -> a resume point holds finished work
    complete: Callable[[Path], bool] | None = None  # workspace -> done (default: every output exists)

    def done(self, ws: Path) -> bool:
        return self.complete(ws) if self.complete else all((ws / o).exists() for o in self.outputs)


def _has_files(path: Path) -> bool:
    return path.is_dir() and any(p.is_file() for p in path.rglob("*"))


def _finetune_argv(ws: Path) -> list[str]:
    argv = ["finetune", str(ws / "model"), "--data", str(ws / "corpus.txt"), "--out", str(ws / "tuned"),
            "--train", "last:2", "--lm-head", "--steps", "600", "--save-every", "1", "--seqlen", "32",
            "--batch-size", "2", "--eval-data", "none", "--ood-data", "none"]
    return argv + (["--resume"] if (ws / ".tuned.checkpoint").exists() else [])


def _recipe(ws: Path) -> str:
    recipe = ws / "recipe.yaml"
    recipe.write_text(json.dumps({"model": str(ws / "model"), "out": str(ws / "run"), "stages": [
        {"quantize": {"bits": 4, "group_size": 16, "blocks": "0:-2",
                      "calib": {"data": str(ws / "corpus.txt"), "nsamples": 16, "seqlen": 32}}},
        {"finetune": {"train": "last:2", "lm_head": True, "data": str(ws / "corpus.txt"), "seqlen": 32,
                      "batch_size": 2, "steps": 8, "save_every": 1, "eval_data": "none", "ood_data": "none"}},
        {"export": {"type": "q8_0", "calib": {"data": str(ws / "corpus.txt"), "nsamples": 16, "seqlen": 32}}},
    ]}))
    return str(recipe)


COMMANDS = {
    "quantize": Command("quantize", lambda ws: [
        "quantize", str(ws / "model"), "--out", str(ws / "q4"), "--calib", str(ws / "corpus.txt"), "--bits", "4",
        "--group-size", "16", "--nsamples", "32", "--seqlen", "32"], ("q4",), lambda ws: _has_files(ws / ".q4.partial")),
    "finetune": Command("finetune", _finetune_argv, ("tuned",), lambda ws: _has_files(ws / ".tuned.checkpoint")),
    "export": Command("export", lambda ws: [
        "export", str(ws / "model"), "--type", "q4_0", "--out", str(ws / "m.gguf"), "--calib", str(ws / "corpus.txt"),
        "--nsamples", "32", "--seqlen", "32"], ("m.gguf",), lambda ws: _has_files(ws / ".m.gguf.partial")),
    "run RECIPE": Command("run RECIPE", lambda ws: ["run", _recipe(ws)], ("run",),
                          lambda ws: _has_files(ws / "run"),
                          lambda ws: (ws / "run" / "2-export" / ".llmshrink-stage.json").is_file()),
}


def make_workspace(ws: Path) -> Path:
    """A tiny LLaMA (8 blocks) and a corpus, as a user's folder."""
    from tests.conftest import TEXT, make_tiny_model, make_tokenizer, save_model_dir

    ws.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer()
    save_model_dir(ws / "model", make_tiny_model(len(tok), layers=8, hidden=64, intermediate=128), tok)
    (ws / "corpus.txt").write_text(TEXT * 8)
    return ws


def _masked(value, ws: str):
    if isinstance(value, dict):
        return {k: _masked(v, ws) for k, v in value.items() if "seconds" not in k and k != "hash"}
    if isinstance(value, list):
        return [_masked(v, ws) for v in value]
    return value.replace(ws, "<ws>") if isinstance(value, str) else value


def snapshot(path: Path, ws: Path) -> dict[str, object]:
    """A file or folder's contents, timings and the workspace path masked in JSON records; a
    resume point's hidden files and the stage markers' own timings excluded."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    out: dict[str, object] = {}
    for p in files:
        rel = str(p.relative_to(path.parent if path.is_file() else path))
        if any(part.startswith(".") and part != ".llmshrink-stage.json" for part in Path(rel).parts):
            continue  # hidden: temporaries and resume points, not outputs
        data = p.read_bytes()
        if p.suffix in (".json", ".jsonl"):
            lines = data.decode().splitlines() if p.suffix == ".jsonl" else [data.decode()]
            out[rel] = [_masked(json.loads(line), str(ws)) for line in lines if line.strip()]
        else:
            out[rel] = data.replace(str(ws).encode(), b"<ws>")
    return out


def _run(argv: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmshrink", "-q", *argv], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _env(cache: Path) -> dict:
    return {**os.environ, "LLMSHRINK_CACHE": str(cache), "PYTHONPATH": str(ROOT / "src"), "PYTHONHASHSEED": "0"}


def _startup_seconds(env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, transformers, llmshrink.cli.compress"], env=env, check=True)
    return time.perf_counter() - t0


def _same_so_far(cmd: Command, ws: Path, ref: Path) -> bool:
    """Whatever exists under a final name is complete: every visible file equals the reference's,
    and an output that appears whole (a folder written atomically, a recipe stage with its marker)
    has all of the reference's files."""
    for name in cmd.outputs:
        path = ws / name
        if not path.exists():
            continue
        parts = sorted(p for p in path.iterdir() if not p.name.startswith(".")) if cmd.name == "run RECIPE" else [path]
        for part in parts:
            want, got = snapshot(ref / part.relative_to(ws), ref), snapshot(part, ws)
            if any(want.get(k) != v for k, v in got.items()):
                return False
            whole = cmd.name != "run RECIPE" or ".llmshrink-stage.json" in got or part.name != "2-export"
            if whole and set(got) | {".llmshrink-stage.json"} != set(want) | {".llmshrink-stage.json"}:
                return False
    return True


def _reset(cmd: Command, ws: Path) -> None:
    """Remove the command's outputs and resume points (a finished chain starts again)."""
    for p in ws.iterdir():
        if p.name not in ("model", "corpus.txt"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def kill_and_resume(cmd: Command, root: Path, *, kills: int, seed: int) -> dict:
    """The command uninterrupted (the reference), then ``kills`` runs each SIGKILLed at a seeded
    moment of its work and resumed by the next; whenever a run finishes, its outputs are compared
    with the reference and the chain starts again from nothing. Returns the row of the table."""
    shutil.rmtree(root, ignore_errors=True)
    # the same path length in both workspaces: files that hold the model's path compare equal once masked
    ref, ws = make_workspace(root / "a"), root / "b"
    shutil.copytree(ref, ws)
    env = _env(root / "cache")
    t0 = time.perf_counter()
    done = _run(cmd.argv(ref), env)
    full = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{cmd.name} failed uninterrupted: {done.stderr[-2000:]}")
    start = _startup_seconds(env)
    rng = random.Random(seed)
    resumed = never_partial = finished = identical = 0

    def finish() -> None:
        nonlocal finished, identical
        finished += 1
        identical += all(snapshot(ws / o, ws) == snapshot(ref / o, ref) for o in cmd.outputs)
        _reset(cmd, ws)

    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-m", "llmshrink", "-q", *cmd.argv(ws)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(start, max(start, full)))
        proc.send_signal(signal.SIGKILL)
        ended = proc.wait() == 0  # it finished before the signal came
        never_partial += _same_so_far(cmd, ws, ref)
        # finished, or killed after its outputs appeared (and before its resume point was removed)
        if ended or cmd.done(ws):
            finish()
        else:
            resumed += cmd.state(ws)
    last = _run(cmd.argv(ws), env)
    if last.returncode != 0:
        raise RuntimeError(f"{cmd.name}: the last resumed run failed: {last.stderr[-2000:]}")
    finish()
    return {"command": cmd.name, "kills": kills, "resumed": resumed, "never_partial": never_partial,
            "finished": finished, "identical": identical, "uninterrupted_s": round(full, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", default="runs/faults")
    p.add_argument("--commands", default=",".join(COMMANDS))
    args = p.parse_args(argv)
    print("| command | kills | left a resume point | outputs never partial | runs finished | identical | "
          "uninterrupted s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    ok = True
    for name in args.commands.split(","):
        row = kill_and_resume(COMMANDS[name], Path(args.root) / name.replace(" ", "-"), kills=args.kills,
                              seed=args.seed)
        ok &= row["identical"] == row["finished"] and row["never_partial"] == row["kills"]
        print(f"| {row['command']} | {row['kills']} | {row['resumed']} | {row['never_partial']} | {row['finished']} | "
              f"{row['identical']} | {row['uninterrupted_s']} |", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
