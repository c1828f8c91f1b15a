"""``llmshrink`` command line: a thin layer over the API.

Bad input ends in one line on stderr naming the fix and exit status 2; ``--debug`` shows the
traceback instead. Progress bars and logs go to stderr, so ``--json`` output on stdout stays clean.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from .errors import UserError


@dataclass(frozen=True)
class Command:
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, add_args: Callable[[argparse.ArgumentParser], None]):
    """Register ``llmshrink NAME``: ``add_args`` declares its arguments, the decorated function runs it."""

    def register(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = Command(help, add_args, run)
        return run

    return register


def _progress():
    from tqdm.auto import tqdm

    return partial(tqdm, file=sys.stderr, dynamic_ncols=True, leave=False)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--trust-remote-code", action="store_true", help="allow a model folder's own Python code to run")


def _load(args: argparse.Namespace):
    from .models.load import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)


def _print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# ---------------------------------------------------------------- generate


def _generate_args(p: argparse.ArgumentParser) -> None:
    from .config import GenerateConfig
    from .data.templates import TEMPLATES

    d = GenerateConfig()
    p.add_argument("model", help="model folder, .gguf file, or alias")
    p.add_argument("prompt", help="the instruction")
    p.add_argument("--input", default="", help="input section for the instruction")
    p.add_argument("--context", default="", help="context section (spanish and alpaca templates)")
    p.add_argument("--template", default=d.template, choices=list(TEMPLATES))
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--top-k", type=int, default=d.top_k)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--show-prompt", action="store_true", help="print the rendered prompt first")
    _model_args(p)


@command("generate", "answer one instruction through a prompt template", _generate_args)
def cmd_generate(args: argparse.Namespace) -> int:
    from .config import GenerateConfig
    from .generate import generate

    cfg = GenerateConfig(template=args.template, max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                         temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    lm = _load(args)
    out = generate(lm.model, lm.tokenizer, args.prompt, cfg, input=args.input, context=args.context)
    if args.show_prompt:
        print(out.prompt, end="" if out.prompt.endswith("\n") else "\n")
    print(out.text)
    logging.getLogger("llmshrink").info("%d tokens in %.1f s", out.new_tokens, out.seconds)
    return 0


# ---------------------------------------------------------------- quantize


def _quantize_args(p: argparse.ArgumentParser) -> None:
    from .config import QUANT_METHODS, QuantConfig
    from .quant.job import CalibConfig

    d, c = QuantConfig(), CalibConfig()
    p.add_argument("model", help="model folder, .gguf file, or alias")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--method", default=d.method, help=" or ".join(QUANT_METHODS))
    p.add_argument("--bits", type=int, default=d.bits, help="2, 3, 4 or 8")
    p.add_argument("--group-size", type=int, default=d.group_size, help="-1 for one group per row")
    grid = p.add_mutually_exclusive_group()
    grid.add_argument("--sym", dest="sym", action="store_true", default=d.sym, help="symmetric grid (default)")
    grid.add_argument("--asym", dest="sym", action="store_false", help="asymmetric grid")
    p.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=d.act_order)
    p.add_argument("--static-groups", action="store_true", default=d.static_groups)
    p.add_argument("--mse", action=argparse.BooleanOptionalAction, default=d.mse,
                   help="search shrunk ranges for the lowest (Hessian-weighted) error per group (default on; "
                        "--no-mse: plain min/max ranges)")
    p.add_argument("--damp", type=float, default=d.damp)
    p.add_argument("--calib", default=c.data, help="calibration corpus")
    p.add_argument("--nsamples", type=int, default=c.nsamples)
    p.add_argument("--seqlen", type=int, default=c.seqlen)
    p.add_argument("--seed", type=int, default=c.seed)
    p.add_argument("--batch-size", type=int, default=c.batch_size, help="calibration windows per forward pass")
    p.add_argument("--blocks", default=None, help="blocks to quantize, A:B (default all)")
    p.add_argument("--lm-head", action="store_true",
                   help="quantize the lm_head too (untied from the embeddings; default: keep it full precision)")
    _model_args(p)


@command("quantize", "quantize a model's decoder blocks (GPTQ or RTN) into a GPTQ checkpoint", _quantize_args)
def cmd_quantize(args: argparse.Namespace) -> int:
    from .config import QuantConfig
    from .quant.job import CalibConfig, run_quantize

    cfg = QuantConfig(method=args.method, bits=args.bits, group_size=args.group_size, sym=args.sym,
                      act_order=args.act_order, static_groups=args.static_groups, damp=args.damp, mse=args.mse)
    from .models.load import load_model

    calib = CalibConfig(args.calib, args.nsamples, args.seqlen, args.seed, args.batch_size)
    # Blocks stay on disk until the driver reaches them: memory holds one float block at a time.
    lm = load_model(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code,
                    lazy_blocks=True)
    report, out = run_quantize(lm, cfg, calib, args.out, blocks=args.blocks, lm_head=args.lm_head,
                               progress=_progress())
    def total(values) -> str:
        values = [v for v in values if v is not None]
        return f"{sum(values):.4g}" if values else "-"

    print(f"| block | layers | loss ({cfg.method}) | loss (rtn) | max damp | solve s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for b in report.blocks:
        rows = [r for r in report.layers if r.name.startswith(f"{lm.arch.layers}.{b}.")]
        print(f"| {b} | {len(rows)} | {total(r.loss for r in rows)} | {total(r.rtn_loss for r in rows)} | "
              f"{max(r.damp for r in rows):g} | {sum(r.seconds for r in rows):.1f} |")
    print(f"\nsaved {out} ({_mb(sum(f.stat().st_size for f in out.glob('*.safetensors')))}); "
          f"per-layer table: {out / 'quantize_layers.jsonl'}; {report.seconds:.0f} s")
    return 0


# ---------------------------------------------------------------- export


def _export_args(p: argparse.ArgumentParser) -> None:
    from .config import GGUFConfig
    from .export.ggml import EXPORT_TYPES
    from .quant.job import CalibConfig

    d, c = GGUFConfig(), CalibConfig()
    p.add_argument("model", help="model folder (plain, pruned or GPTQ-quantized), .gguf file, or alias")
    p.add_argument("--format", default="gguf", choices=["gguf"], help="output format (gguf)")
    p.add_argument("--type", default=d.type, help=", ".join(EXPORT_TYPES))
    p.add_argument("--embed-type", default=None, help="type of token_embd/output (default q8_0 for quantized types)")
    p.add_argument("--out", required=True, help="output .gguf file (written atomically)")
    p.add_argument("--method", default=d.method, choices=["gptq", "rtn"],
                   help="gptq: solve on the type's grid (default); rtn: round to nearest")
    p.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=d.act_order)
    p.add_argument("--mse", action=argparse.BooleanOptionalAction, default=d.mse)
    p.add_argument("--damp", type=float, default=d.damp)
    p.add_argument("--calib", default=c.data, help="calibration corpus")
    p.add_argument("--nsamples", type=int, default=c.nsamples)
    p.add_argument("--seqlen", type=int, default=c.seqlen)
    p.add_argument("--seed", type=int, default=c.seed)
    p.add_argument("--batch-size", type=int, default=c.batch_size)
    _model_args(p)


@command("export", "write a model as a GGUF file for llama.cpp (GPTQ solved on Q4_0/Q4_1/Q8_0 grids)",
         _export_args)
def cmd_export(args: argparse.Namespace) -> int:
    from .config import GGUFConfig
    from .export.gguf import export_gguf
    from .quant.job import CalibConfig

    cfg = GGUFConfig(type=args.type, embed_type=args.embed_type, method=args.method, act_order=args.act_order,
                     damp=args.damp, mse=args.mse)
    calib = CalibConfig(args.calib, args.nsamples, args.seqlen, args.seed, args.batch_size)
    lm = _load(args)
    rep = export_gguf(lm, cfg, args.out, calib=calib, progress=_progress())
    _print_table([
        ("file", str(rep.path)), ("type", f"{rep.type} (embeddings {rep.embed_type})"),
        ("tensors", ", ".join(f"{n} {k}" for k, n in sorted(rep.tensors.items()))),
        ("layers solved", f"{len(rep.solved)} ({rep.method})"), ("layers carried over", str(len(rep.carried))),
        ("layers re-rounded", str(len(rep.requantized))), ("size", _mb(rep.size)), ("seconds", f"{rep.seconds:.1f}"),
    ])
    return 0


# ---------------------------------------------------------------- prune


def _prune_args(p: argparse.ArgumentParser) -> None:
    from .config import HEAL_LOSSES, HEAL_METHODS, PRUNE_CRITERIA, HealConfig, PruneConfig

    d, h = PruneConfig(), HealConfig()
    p.add_argument("model", help="model folder, .gguf file, or alias")
    p.add_argument("--out", required=True,
                   help="output folder (written atomically): the pruned model, or with --score-only the scores")
    p.add_argument("--criterion", default=d.criterion, help=", ".join(PRUNE_CRITERIA))
    p.add_argument("--score-only", action="store_true", help="score the blocks (JSON + PNG), remove nothing")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--remove", type=int, default=None, help="number of blocks to remove")
    how.add_argument("--ratio", type=float, default=None, help="fraction of blocks to remove, in (0, 1)")
    p.add_argument("--keep-first", type=int, default=d.keep_first, help="never remove the first N blocks")
    p.add_argument("--keep-last", type=int, default=d.keep_last, help="never remove the last N blocks")
    p.add_argument("--iterative", action="store_true", help="re-score after each removal")
    p.add_argument("--data", default=d.data, help="scoring corpus")
    p.add_argument("--nsamples", type=int, default=d.nsamples, help="scoring windows")
    p.add_argument("--seqlen", type=int, default=d.seqlen, help="tokens per scoring window")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--heal", default=h.method, choices=HEAL_METHODS, help="heal the pruned model (default none)")
    p.add_argument("--heal-steps", type=int, default=h.steps)
    p.add_argument("--heal-data", default=h.data, help="healing corpus")
    p.add_argument("--heal-seqlen", type=int, default=h.seqlen)
    p.add_argument("--heal-batch-size", type=int, default=h.batch_size)
    p.add_argument("--heal-lr", type=float, default=h.lr)
    p.add_argument("--heal-loss", default=h.loss, choices=HEAL_LOSSES,
                   help="lm: next-token loss; kd: distil from the unpruned model; lm+kd: both")
    p.add_argument("--lora-rank", type=int, default=h.rank)
    p.add_argument("--lora-alpha", type=float, default=h.alpha)
    _model_args(p)


@command("prune", "score decoder blocks, remove the least important, heal with LoRA", _prune_args)
def cmd_prune(args: argparse.Namespace) -> int:
    from .config import HealConfig, PruneConfig
    from .prune.job import run_prune

    cfg = PruneConfig(criterion=args.criterion, remove=args.remove, ratio=args.ratio, keep_first=args.keep_first,
                      keep_last=args.keep_last, iterative=args.iterative, data=args.data, nsamples=args.nsamples,
                      seqlen=args.seqlen, seed=args.seed, batch_size=args.batch_size)
    heal = HealConfig(method=args.heal, steps=args.heal_steps, data=args.heal_data, seqlen=args.heal_seqlen,
                      batch_size=args.heal_batch_size, lr=args.heal_lr, loss=args.heal_loss, rank=args.lora_rank,
                      alpha=args.lora_alpha)
    if args.score_only and args.heal != "none":
        raise UserError("--score-only removes nothing, so there is nothing to --heal: drop one of them")
    lm = _load(args)
    rec = run_prune(lm, cfg, args.out, heal=heal, score_only=args.score_only, progress=_progress())
    first = rec["scores"][0]
    removed = set(rec.get("removed", []))
    print(f"| block | {cfg.criterion} score | removed |")
    print("|---:|---:|:---:|")
    for i, s in enumerate(first["scores"]):
        print(f"| {i} | {s:.6g} | {'x' if i in removed else ''} |")
    print(f"\nscored in {first['seconds']:.1f} s")
    if args.score_only:
        print(f"saved {args.out}/block_scores.json and block_scores.png")
        return 0
    print(f"removed {sorted(removed)}: {rec['blocks_before']} -> {rec['blocks_after']} blocks, "
          f"{rec['parameters_before']:,} -> {rec['parameters_after']:,} parameters")
    if "heal" in rec:
        hr = rec["heal"]
        print(f"healed: {hr['steps']} steps, {hr['tokens']:,} tokens in {hr['seconds']:.0f} s, "
              f"loss {hr['loss_first']:.3f} -> {hr['loss_last']:.3f}")
    print(f"saved {args.out} (a plain transformers model; scores in llmshrink_prune.json, block_scores.png)")
    return 0


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="llmshrink", description="Make LLaMA-family models small and fast, and measure what it cost.")
    parser.add_argument("--version", action="version", version=f"llmshrink {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    from . import cli_eval, cli_tune  # noqa: F401  (register eval, bench, report; finetune, run, demo)

    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_args(p)
        p.set_defaults(run=cmd.run)
    return parser


def _setup_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("llmshrink: %(message)s"))
    root = logging.getLogger("llmshrink")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    if not debug:
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()  # its per-load bars; ours cover the long work
        except ImportError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.debug, args.quiet)
    try:
        return args.run(args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"llmshrink: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("llmshrink: interrupted", file=sys.stderr)
        return 130
