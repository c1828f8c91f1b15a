"""``llmshrink eval``, ``bench``, ``report`` and ``generate``: thin layers over :mod:`llmshrink.eval`
and :mod:`llmshrink.generation`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..config import Part
from ..errors import UserError
from .common import (
    check_json_out,
    command,
    config,
    config_args,
    load,
    mb,
    print_table,
    progress,
    value,
    write_json,
)


def _eval_parts() -> tuple[Part, Part]:
    from ..eval.config import EvalConfig
    from ..eval.harness import TaskRequest

    return Part("eval", EvalConfig), Part("tasks", TaskRequest, skip=("data", "batch_size"))


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model folder, .gguf file, or alias (e.g. smollm2-135m)")
    config_args(p, _eval_parts())
    p.add_argument("--no-perplexity", action="store_true", help="with --tasks: skip the perplexity run")
    p.add_argument("--out", default=None, help="folder to write eval.json into (for llmshrink report)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--record", action=argparse.BooleanOptionalAction, default=True,
                   help="keep the perplexity in a folder llmshrink wrote (llmshrink_evals.json) and write its "
                        "model card again (default: on)")
    from ..eval.config import BACKENDS

    p.add_argument("--backend", default="auto", choices=list(BACKENDS),
                   help="auto (default): llama.cpp for a .gguf file, transformers otherwise")


@command("eval", "perplexity and zero-shot accuracy (lm-eval) of a model", _eval_args)
def cmd_eval(args: argparse.Namespace) -> int:
    from ..eval.config import eval_backend
    from ..eval.run import evaluate_perplexity

    eval_part, tasks_part = _eval_parts()
    cfg = config(args, eval_part)
    req = None
    if value(args, tasks_part, "tasks") or value(args, tasks_part, "limit") is not None:
        req = config(args, tasks_part, data=cfg.data, batch_size=cfg.batch_size)
    if args.no_perplexity and req is None:
        raise UserError("--no-perplexity leaves nothing to do without --tasks")
    check_json_out(args.out)
    from ..jobs.preflight import preflight

    preflight(args.model, corpora=[cfg.data if not args.no_perplexity else None, req.data if req else None])
    if req is not None:
        from ..eval.harness import check_tasks

        check_tasks(req)
    backend = eval_backend(args.model, args.backend)
    if backend == "llama.cpp":
        if req is not None:
            raise UserError("--tasks runs through transformers; evaluate the GGUF file's perplexity alone, "
                            "or the model folder it was exported from")
        from ..eval.llamacpp import load_llamacpp

        lm = load_llamacpp(args.model, n_ctx=cfg.seqlen)
    else:
        lm = load(args)
    rec: dict = {"model": lm.name, "backend": backend, "parameters": lm.num_parameters,
                 "size_on_disk": lm.size_on_disk}
    if not args.no_perplexity:
        rec.update(evaluate_perplexity(lm, cfg, progress=progress()))
    if req is not None:
        from ..eval.harness import run_tasks

        rec["tasks"] = run_tasks(lm, req)["tasks"]
    write_json(args.out, "eval.json", rec)
    if args.record and backend == "transformers" and Path(args.model).is_dir():
        from ..jobs.card import record_eval

        card = record_eval(Path(args.model), rec)
        if card is not None and not args.json:
            print(f"kept in {Path(args.model) / 'llmshrink_evals.json'}; model card {card} written again")
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
    rows += [("parameters", f"{rec['parameters']:,}"), ("size on disk", mb(rec["size_on_disk"]))]
    print_table(rows)
    return 0


# ---------------------------------------------------------------- bench


def _bench_part() -> Part:
    from ..eval.config import BenchConfig

    return Part("bench", BenchConfig)


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model folder or alias (e.g. smollm2-135m)")
    config_args(p, [_bench_part()])
    p.add_argument("--out", default=None, help="folder to write bench.json into (for llmshrink report)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


@command("bench", "decode latency, bandwidth use, peak memory and size of a model", _bench_args)
def cmd_bench(args: argparse.Namespace) -> int:
    from ..eval.bench import bench_model
    from ..jobs.preflight import preflight

    cfg = config(args, _bench_part())
    check_json_out(args.out)
    preflight(args.model)
    rec = bench_model(load(args), cfg)
    write_json(args.out, "bench.json", rec)
    if args.json:
        print(json.dumps(rec))
        return 0
    print_table([
        ("model", rec["model"]), ("device", f"{rec['device']} ({rec['threads']} threads)"),
        ("prefill", f"{rec['prefill_ms']:.1f} ms for {cfg.prompt_tokens} tokens"),
        ("decode", f"{rec['decode_ms_per_token']:.2f} ms/token ({rec['tokens_per_second']:.1f} tokens/s)"),
        ("weights read per token", mb(rec["weight_bytes"])),
        ("achieved", f"{rec['achieved_gb_per_s']:.1f} GB/s of {rec['memory_bandwidth_gb_per_s']:.1f} GB/s measured "
                     f"({rec['bandwidth_fraction']:.0%})"),
        (rec["peak_memory_kind"], f"{rec['peak_memory_bytes'] / 2**20:,.0f} MiB"),
        ("size on disk", mb(rec["size_on_disk"])),
    ])
    return 0


# ---------------------------------------------------------------- report


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="folders holding eval.json / bench.json / block scores")
    p.add_argument("--out", required=True, help="Markdown file; PNG plots are written beside it")


@command("report", "one Markdown table and PNG plots from eval/bench/prune results", _report_args)
def cmd_report(args: argparse.Namespace) -> int:
    from ..eval.report import write_report

    res = write_report(args.runs, args.out)
    print(f"wrote {res['markdown']} ({len(res['runs'])} runs) and {len(res['plots'])} plots: "
          + ", ".join(Path(p).name for p in res["plots"].values()))
    return 0


# ---------------------------------------------------------------- card


def _card_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="an output folder of quantize, finetune, prune or export --format hf-gptq")


@command("card", "write an output folder's model card (README.md) again, with every score it keeps", _card_args)
def cmd_card(args: argparse.Namespace) -> int:
    from ..jobs.card import read_records, write_card

    folder = Path(args.folder)
    if not folder.is_dir() or not read_records(folder):
        raise UserError(f"{folder} is not a folder llmshrink wrote (no llmshrink_quantize/finetune/prune.json): give "
                        "the --out folder of quantize, finetune, prune or export --format hf-gptq")
    print(f"wrote {write_card(folder)}")
    return 0


def _check_args(p: argparse.ArgumentParser) -> None:
    from ..eval.consumers import CONSUMERS

    p.add_argument("path", help="an output folder (plain or GPTQ) or a .gguf file")
    p.add_argument("--consumer", action="append", choices=list(CONSUMERS), default=None,
                   help="only this consumer (repeatable; default: every one)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--record", action=argparse.BooleanOptionalAction, default=True,
                   help="keep the result in a folder llmshrink wrote (llmshrink_check.json) and write its model "
                        "card again, with usage for each consumer that ran it (default: on)")


@command("check", "load an output in each tool installed here (transformers, GPTQModel, llama.cpp), "
                  "run it, compare its logits with llmshrink's", _check_args)
def cmd_check(args: argparse.Namespace) -> int:
    from ..eval.check import check_output, format_report

    report = check_output(args.path, args.consumer)
    print(json.dumps(report.to_dict()) if args.json else format_report(report))
    if args.record:
        from ..jobs.card import record_check

        record_check(Path(args.path), report.to_dict())
    return 1 if report.failed else 0


# ---------------------------------------------------------------- generate


def _generate_part() -> Part:
    from ..generation import GenerateConfig

    return Part("generate", GenerateConfig)


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model folder, .gguf file, or alias")
    p.add_argument("prompt", help="the instruction")
    p.add_argument("--input", default="", help="input section for the instruction")
    p.add_argument("--context", default="", help="context section (spanish and alpaca templates)")
    p.add_argument("--show-prompt", action="store_true", help="print the rendered prompt first")
    config_args(p, [_generate_part()])


@command("generate", "answer one instruction through a prompt template", _generate_args)
def cmd_generate(args: argparse.Namespace) -> int:
    from ..generation import check_instruction, generate
    from ..jobs.preflight import preflight

    cfg = config(args, _generate_part())
    check_instruction(args.prompt)
    preflight(args.model)
    lm = load(args)
    out = generate(lm.model, lm.tokenizer, args.prompt, cfg, input=args.input, context=args.context)
    if args.show_prompt:
        print(out.prompt, end="" if out.prompt.endswith("\n") else "\n")
    print(out.text)
    logging.getLogger("llmshrink").info("%d tokens in %.1f s", out.new_tokens, out.seconds)
    return 0
