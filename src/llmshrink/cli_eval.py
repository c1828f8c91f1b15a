"""``llmshrink eval``, ``llmshrink bench`` and ``llmshrink report``: thin layers over
:mod:`llmshrink.eval`, registered in :mod:`llmshrink.cli`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cli import _load, _mb, _model_args, _print_table, _progress, command
from .errors import UserError


def _write_json(out: str | None, name: str, rec: dict) -> None:
    """``OUT/name`` (the folder is created; the file is written atomically) for ``llmshrink report``."""
    if out is None:
        return
    from .paths import atomic_file

    folder = Path(out)
    if not folder.parent.is_dir():
        raise UserError(f"the folder {folder.parent} does not exist: create it or choose another --out")
    folder.mkdir(exist_ok=True)
    with atomic_file(folder / name) as tmp:
        tmp.write_text(json.dumps(rec, indent=2) + "\n")


# ---------------------------------------------------------------- eval


def _eval_args(p: argparse.ArgumentParser) -> None:
    from .config import EvalConfig

    d = EvalConfig()
    p.add_argument("model", help="model folder, .gguf file, or alias (e.g. smollm2-135m)")
    p.add_argument("--data", default=d.data, help="corpus: name[:split], .txt, folder, .jsonl or hf:NAME "
                                                  "(perplexity, and the text the built-in tasks are made from)")
    p.add_argument("--seqlen", type=int, default=d.seqlen)
    p.add_argument("--stride", type=int, default=None, help="sliding windows with this step (default: non-overlapping)")
    p.add_argument("--max-tokens", type=int, default=None, help="evaluate only the first N tokens")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--tasks", default=None, help="zero-shot tasks through lm-eval, comma-separated: built-in "
                                                 "lastword, cloze4, your own items as KIND=FILE.jsonl (e.g. "
                                                 "cloze4=items.jsonl), or lm-eval task names (hellaswag, piqa, ...)")
    p.add_argument("--limit", type=int, default=None, help="items per task (default: all)")
    p.add_argument("--no-perplexity", action="store_true", help="with --tasks: skip the perplexity run")
    p.add_argument("--out", default=None, help="folder to write eval.json into (for llmshrink report)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--backend", default="auto", choices=["auto", "transformers", "llama.cpp"],
                   help="auto (default): llama.cpp for a .gguf file, transformers otherwise")
    _model_args(p)


def _eval_backend(args: argparse.Namespace) -> str:
    if args.backend != "auto":
        return args.backend
    return "llama.cpp" if Path(args.model).suffix.lower() == ".gguf" and Path(args.model).is_file() else "transformers"


@command("eval", "perplexity and zero-shot accuracy (lm-eval) of a model", _eval_args)
def cmd_eval(args: argparse.Namespace) -> int:
    from .config import EvalConfig
    from .eval.run import evaluate_perplexity

    cfg = EvalConfig(data=args.data, seqlen=args.seqlen, stride=args.stride, max_tokens=args.max_tokens,
                     batch_size=args.batch_size)
    req = None
    if args.tasks is not None or args.limit is not None:
        from .eval.harness import TaskRequest

        req = TaskRequest(tuple(t.strip() for t in (args.tasks or "").split(",") if t.strip()), data=args.data,
                          limit=args.limit, batch_size=args.batch_size)
    if args.no_perplexity and req is None:
        raise UserError("--no-perplexity leaves nothing to do without --tasks")
    backend = _eval_backend(args)
    if backend == "llama.cpp":
        if req is not None:
            raise UserError("--tasks runs through transformers; evaluate the GGUF file's perplexity alone, "
                            "or the model folder it was exported from")
        from .eval.llamacpp import load_llamacpp

        lm = load_llamacpp(args.model, n_ctx=cfg.seqlen)
    else:
        lm = _load(args)
    rec: dict = {"model": lm.name, "backend": backend, "parameters": lm.num_parameters,
                 "size_on_disk": lm.size_on_disk}
    if not args.no_perplexity:
        rec.update(evaluate_perplexity(lm, cfg, progress=_progress()))
    if req is not None:
        from .eval.harness import run_tasks

        rec["tasks"] = run_tasks(lm, req)["tasks"]
    _write_json(args.out, "eval.json", rec)
    if args.json:
        print(json.dumps(rec))
        return 0
    rows = [("model", rec["model"]), ("backend", backend)]
    if "perplexity" in rec:
        rows += [("data", rec["data"]), ("perplexity", f"{rec['perplexity']:.4f}"),
                 ("tokens scored", str(rec["tokens"])), ("windows", f"{rec['windows']} x {rec['seqlen']}"),
                 ("seconds", f"{rec['seconds']:.1f}")]
    for name, t in rec.get("tasks", {}).items():
        rows.append((f"{name} {t['main_metric']}", f"{t['score']:.4f} ({t['items']} items)"))
    rows += [("parameters", f"{rec['parameters']:,}"), ("size on disk", _mb(rec["size_on_disk"]))]
    _print_table(rows)
    return 0


# ---------------------------------------------------------------- bench


def _bench_args(p: argparse.ArgumentParser) -> None:
    from .eval.bench import BenchConfig

    d = BenchConfig()
    p.add_argument("model", help="model folder or alias (e.g. smollm2-135m)")
    p.add_argument("--prompt-tokens", type=int, default=d.prompt_tokens)
    p.add_argument("--new-tokens", type=int, default=d.new_tokens)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed runs after the warm-up (median)")
    p.add_argument("--out", default=None, help="folder to write bench.json into (for llmshrink report)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _model_args(p)


@command("bench", "decode latency, bandwidth use, peak memory and size of a model", _bench_args)
def cmd_bench(args: argparse.Namespace) -> int:
    from .eval.bench import BenchConfig, bench_model

    cfg = BenchConfig(prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, batch_size=args.batch_size,
                      repeats=args.repeats)
    rec = bench_model(_load(args), cfg)
    _write_json(args.out, "bench.json", rec)
    if args.json:
        print(json.dumps(rec))
        return 0
    _print_table([
        ("model", rec["model"]), ("device", f"{rec['device']} ({rec['threads']} threads)"),
        ("prefill", f"{rec['prefill_ms']:.1f} ms for {cfg.prompt_tokens} tokens"),
        ("decode", f"{rec['decode_ms_per_token']:.2f} ms/token ({rec['tokens_per_second']:.1f} tokens/s)"),
        ("weights read per token", _mb(rec["weight_bytes"])),
        ("achieved", f"{rec['achieved_gb_per_s']:.1f} GB/s of {rec['memory_bandwidth_gb_per_s']:.1f} GB/s measured "
                     f"({rec['bandwidth_fraction']:.0%})"),
        (rec["peak_memory_kind"], f"{rec['peak_memory_bytes'] / 2**20:,.0f} MiB"),
        ("size on disk", _mb(rec["size_on_disk"])),
    ])
    return 0


# ---------------------------------------------------------------- report


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="folders holding eval.json / bench.json / block scores")
    p.add_argument("--out", required=True, help="Markdown file; PNG plots are written beside it")


@command("report", "one Markdown table and PNG plots from eval/bench/prune results", _report_args)
def cmd_report(args: argparse.Namespace) -> int:
    from .eval.report import write_report

    res = write_report(args.runs, args.out)
    print(f"wrote {res['markdown']} ({len(res['runs'])} runs) and {len(res['plots'])} plots: "
          + ", ".join(Path(p).name for p in res["plots"].values()))
    return 0
