"""Prove that a change of code leaves llmshrink's outputs byte-identical.

``run`` makes a fixed set of outputs with the llmshrink found first on ``sys.path`` (point
``PYTHONPATH`` at another checkout's ``src`` to run that one), one command at a time, and writes
``manifest.json``: the SHA-256 of every file of every output. Fields that measure time (and only
those) are dropped from JSON/JSONL files before hashing, since no two runs take the same time;
every other byte counts. ``compare`` diffs two manifests and exits 1 on any difference.

    PYTHONPATH=/tmp/base/src python bench/byte_identical.py run  --root runs/bytes/before
    python bench/byte_identical.py run  --root runs/bytes/after
    python bench/byte_identical.py compare runs/bytes/before runs/bytes/after

Cases: tiny random LLaMA models (tied and untied lm_head; made once under ``--tiny`` and shared
by both runs), and with ``--default`` the default model: ``quantize`` 4-bit g128, ``quantize
--bits 3 --blocks 0:26``, ``export --type q4_0``, ``prune --remove 6 --heal none`` and the first
stage of each shipped recipe (``--only`` picks cases by name).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMING_KEYS = {"seconds", "quantize_seconds", "train_seconds", "score_seconds", "eval_seconds", "load_seconds"}


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def file_digest(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix in (".json", ".jsonl") and path.name not in ("tokenizer.json", "config.json"):
        lines = data.decode().splitlines() if path.suffix == ".jsonl" else [data.decode()]
        data = "\n".join(json.dumps(_strip(json.loads(ln)), sort_keys=True) for ln in lines if ln.strip()).encode()
    return hashlib.sha256(data).hexdigest()


def tree_digest(out: Path) -> dict[str, str]:
    if out.is_file():
        return {out.name: file_digest(out)}
    return {str(p.relative_to(out)): file_digest(p) for p in sorted(out.rglob("*")) if p.is_file()}


def make_tiny(folder: Path) -> dict[str, Path]:
    """Tiny LLaMA folders and a corpus, built once (the tests' own fixtures)."""
    sys.path.insert(0, str(ROOT))
    from tests.conftest import TEXT, make_tiny_model, make_tokenizer, save_model_dir

    paths = {"tied": folder / "tiny-tied", "untied": folder / "tiny-untied", "text": folder / "corpus.txt",
             "q4": folder / "tiny-tied-q4"}
    if not paths["text"].is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tok = make_tokenizer()
        save_model_dir(paths["tied"], make_tiny_model(len(tok), layers=4), tok)
        save_model_dir(paths["untied"], make_tiny_model(len(tok), seed=1, tie=False, layers=4), tok)
        paths["text"].write_text(TEXT * 40)
    return paths


def first_stage_recipe(recipe: Path, out: Path, dest: Path) -> Path:
    import yaml

    data = yaml.safe_load(recipe.read_text())
    data["stages"] = data["stages"][:1]
    data["out"] = str(out)
    dest.write_text(yaml.safe_dump(data))
    return dest


def cases(tiny: dict[str, Path], root: Path, default: bool) -> dict[str, tuple[list[str], Path]]:
    """name -> (llmshrink arguments, the output to hash)."""
    text = str(tiny["text"])
    cal = ["--calib", text, "--nsamples", "8", "--seqlen", "32", "--batch-size", "4"]
    c: dict[str, tuple[list[str], Path]] = {}
    for kind in ("tied", "untied"):
        m = str(tiny[kind])
        c[f"tiny-{kind}-q4"] = (["quantize", m, *cal], root / f"tiny-{kind}-q4")
        c[f"tiny-{kind}-q2-asym-blocks"] = (["quantize", m, "--bits", "2", "--asym", "--group-size", "16",
                                             "--blocks", "0:3", *cal], root / f"tiny-{kind}-q2-asym-blocks")
        c[f"tiny-{kind}-rtn-lmhead"] = (["quantize", m, "--method", "rtn", "--bits", "8", "--lm-head",
                                         "--static-groups", *cal], root / f"tiny-{kind}-rtn-lmhead")
        for t in ("q4_0", "q4_1", "q8_0", "f16", "bf16"):
            c[f"tiny-{kind}-{t}"] = (["export", m, "--type", t, *cal], root / f"tiny-{kind}-{t}.gguf")
        c[f"tiny-{kind}-prune"] = (["prune", m, "--remove", "1", "--data", text, "--nsamples", "4",
                                    "--seqlen", "32"], root / f"tiny-{kind}-prune")
        c[f"tiny-{kind}-prune-heal"] = (["prune", m, "--remove", "1", "--criterion", "angular", "--data", text,
                                         "--nsamples", "4", "--seqlen", "32", "--heal", "lora", "--heal-steps",
                                         "3", "--heal-data", text, "--heal-seqlen", "32"],
                                        root / f"tiny-{kind}-prune-heal")
        c[f"tiny-{kind}-finetune"] = (["finetune", m, "--train", "last:2", "--lm-head", "--data", text,
                                       "--steps", "3", "--seqlen", "32", "--distill-from", m, "--loss", "task+kd",
                                       "--eval-data", "none"], root / f"tiny-{kind}-finetune")
    # GGUF from a GPTQ checkpoint: the input lives under --tiny (general.name holds its path), copied
    # there from the first run's own tiny-tied-q4 (which the compare proves identical in both runs).
    c["tiny-q4-then-gguf"] = (["export", str(tiny["q4"]), "--type", "q4_0", *cal], root / "tiny-q4-then-q4_0.gguf")
    c["tiny-q4-then-hf-gptq"] = (["export", str(tiny["q4"]), "--format", "hf-gptq"], root / "tiny-q4-then-hf-gptq")
    c["tiny-tied-q4_k_m"] = (["export", str(tiny["tied"]), "--type", "q4_k_m", *cal], root / "tiny-tied-q4_k_m.gguf")
    if default:
        d = "smollm2-135m"
        c["default-q4-g128"] = (["quantize", d, "--bits", "4", "--group-size", "128"], root / "default-q4-g128")
        c["default-q3-blocks-0-26"] = (["quantize", d, "--bits", "3", "--group-size", "128", "--blocks", "0:26"],
                                       root / "default-q3-blocks-0-26")
        c["default-q4_0-gguf"] = (["export", d, "--type", "q4_0"], root / "default-q4_0.gguf")
        c["default-prune-6"] = (["prune", d, "--remove", "6", "--heal", "none"], root / "default-prune-6")
        for recipe in sorted((ROOT / "recipes").glob("*.yaml")):
            out = root / f"recipe-{recipe.stem}"
            c[f"recipe-{recipe.stem}-stage0"] = (["run", "{recipe:" + str(recipe) + "}"], out)
    return c


def run(args) -> int:
    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    tiny = make_tiny(Path(args.tiny).resolve())
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for name, (argv, out) in cases(tiny, root, args.default).items():
        if args.only and not any(s in name for s in args.only):
            continue
        if name in manifest and out.exists():
            print(f"{name}: done before", flush=True)
            continue
        if argv[0] == "run":
            recipe = Path(argv[1][len("{recipe:"):-1])
            argv = ["run", str(first_stage_recipe(recipe, out, root / f"{name}.yaml"))]
        else:
            argv = [*argv, "--out", str(out)]
        if name == "tiny-q4-then-gguf" and not tiny["q4"].exists():
            subprocess.run(["cp", "-r", str(root / "tiny-tied-q4"), str(tiny["q4"])], check=True)
        if out.exists() and argv[0] != "run":
            subprocess.run(["rm", "-rf", str(out)], check=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "llmshrink", "-q", *argv], capture_output=True, text=True,
                              env={**os.environ, "PYTHONHASHSEED": "0"})
        if proc.returncode:
            print(f"{name}: FAILED\n{proc.stderr[-3000:]}", flush=True)
            return 1
        manifest[name] = tree_digest(out)
        manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        print(f"{name}: {len(manifest[name])} files in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


def compare(args) -> int:
    a = json.loads((Path(args.a) / "manifest.json").read_text())
    b = json.loads((Path(args.b) / "manifest.json").read_text())
    bad = 0
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            print(f"{name}: only in {'before' if name in a else 'after'}")
            bad += 1
            continue
        diff = sorted(k for k in set(a[name]) | set(b[name]) if a[name].get(k) != b[name].get(k))
        print(f"{name}: {'identical' if not diff else 'DIFFERS: ' + ', '.join(diff)} ({len(a[name])} files)")
        bad += bool(diff)
    print(f"{len(set(a) | set(b)) - bad} identical, {bad} different")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--root", required=True)
    r.add_argument("--tiny", default="runs/bytes/tiny", help="where the shared tiny models live")
    r.add_argument("--default", action="store_true", help="the default-model cases too (about 60 minutes on 2 cores, 21 of them the LoRA heal of the prune recipe)")
    r.add_argument("--only", nargs="*", help="run only cases whose name contains one of these")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = ap.parse_args()
    return run(args) if args.cmd == "run" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
