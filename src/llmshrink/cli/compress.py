"""``llmshrink quantize``, ``export`` and ``prune``: thin layers over :mod:`llmshrink.jobs`."""

from __future__ import annotations

import argparse

from ..errors import UserError
from .common import add_out, claim, command, config, config_args, load, mb, print_table, progress

# ---------------------------------------------------------------- quantize


def _quantize_args(p: argparse.ArgumentParser) -> None:
    from ..jobs.quantize import PARTS

    p.add_argument("model", help="model folder, .gguf file, or alias")
    add_out(p, "output folder (written atomically; a killed run resumes from .OUT.partial beside it when run "
               "again)")
    config_args(p, PARTS)


@command("quantize", "quantize a model's decoder blocks (GPTQ or RTN) into a GPTQ checkpoint", _quantize_args)
def cmd_quantize(args: argparse.Namespace) -> int:
    from ..jobs.preflight import preflight
    from ..jobs.quantize import PARTS, run_quantize

    cfg, mix, scope, calib = (config(args, part) for part in PARTS)
    calibrated = cfg.method != "rtn" or mix.target_bpw is not None
    preflight(args.model, corpora=[calib.data if calibrated else None], blocks=scope.blocks)
    claim(args)
    # Blocks stay on disk until the driver reaches them: memory holds one float block at a time.
    lm = load(args, lazy_blocks=True)
    report, out = run_quantize(lm, cfg, calib, args.out, blocks=scope.blocks, lm_head=scope.lm_head,
                               save_dtype=scope.save_dtype, activations=scope.activations, mix=mix,
                               overwrite=args.overwrite, progress=progress())

    def total(values) -> str:
        values = [v for v in values if v is not None]
        return f"{sum(values):.4g}" if values else "-"

    print(f"| block | layers | bits | loss ({cfg.method}) | loss (rtn) | max damp | solve s |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for b in report.blocks:
        rows = [r for r in report.layers if r.name.startswith(f"{lm.arch.layers}.{b}.")]
        widths = ",".join(str(r.bits) for r in rows)
        print(f"| {b} | {len(rows)} | {widths} | {total(r.loss for r in rows)} | {total(r.rtn_loss for r in rows)} | "
              f"{max(r.damp for r in rows):g} | {sum(r.seconds for r in rows):.1f} |")
    print(f"\nsaved {out} ({mb(sum(f.stat().st_size for f in out.glob('*.safetensors')))}); "
          f"per-layer table: {out / 'quantize_layers.jsonl'}; {report.seconds:.0f} s")
    return 0


# ---------------------------------------------------------------- export


def _export_args(p: argparse.ArgumentParser) -> None:
    from ..jobs.export import PARTS

    p.add_argument("model", help="model folder (plain, pruned or GPTQ-quantized), .gguf file, or alias")
    add_out(p, "output .gguf file, or folder for hf-gptq or --ladder (written atomically; a killed GGUF export "
               "resumes per block, a ladder per file)")
    config_args(p, PARTS)


@command("export", "write a model as a GGUF file for llama.cpp (GPTQ solved on each type's grid, K mixes included) or a "
                   "Hugging Face GPTQ folder", _export_args)
def cmd_export(args: argparse.Namespace) -> int:
    from ..jobs.export import PARTS, run_export
    from ..jobs.preflight import preflight

    fmt, gguf_cfg, hf_cfg, ladder, calib = (config(args, part) for part in PARTS)
    solves = fmt.format == "gguf" and (gguf_cfg.method != "rtn" or bool(ladder.ladder))
    model_cfg = preflight(args.model, corpora=[calib.data if solves else None,
                                               ladder.eval_data if ladder.ladder else None])
    claim(args, folder=bool(ladder.ladder) or fmt.format != "gguf", resumes=bool(ladder.ladder))
    # a GPTQ checkpoint to one GGUF file: blocks read from disk one at a time (memory holds one)
    lazy = fmt.format == "gguf" and not ladder.ladder and "quantization_config" in (model_cfg or {})
    rep = run_export(load(args, lazy_blocks=lazy), fmt.format, gguf_cfg if fmt.format == "gguf" else hf_cfg, args.out,
                     calib=calib, progress=progress(), ladder=ladder, load=lambda: load(args), overwrite=args.overwrite)
    if ladder.ladder:
        print(rep.table)
        print(f"\nsaved {len(rep.rows)} files, ladder.md and ladder.json in {rep.out}")
        return 0
    if fmt.format != "gguf":
        print(f"saved {rep}")
        return 0
    print_table([
        ("file", str(rep.path)), ("type", f"{rep.type} (embeddings {rep.embed_type})"),
        ("tensors", ", ".join(f"{n} {k}" for k, n in sorted(rep.tensors.items()))),
        ("layers solved", f"{len(rep.solved)} ({rep.method})"), ("layers carried over", str(len(rep.carried))),
        ("layers re-rounded", str(len(rep.requantized))), ("size", mb(rep.size)), ("seconds", f"{rep.seconds:.1f}"),
    ])
    return 0


# ---------------------------------------------------------------- prune


def _prune_args(p: argparse.ArgumentParser) -> None:
    from ..jobs.prune import PARTS

    p.add_argument("model", help="model folder, .gguf file, or alias")
    add_out(p, "output folder (written atomically): the pruned model, or with --score-only the scores")
    p.add_argument("--score-only", action="store_true", help="score the blocks (JSON + PNG), remove nothing")
    config_args(p, PARTS)


@command("prune", "score decoder blocks, remove the least important, heal with LoRA", _prune_args)
def cmd_prune(args: argparse.Namespace) -> int:
    from ..jobs.prune import PARTS, run_prune

    cfg, heal = (config(args, part) for part in PARTS)
    if args.score_only and heal.method != "none":
        raise UserError("--score-only removes nothing, so there is nothing to --heal: drop one of them")
    from ..jobs.preflight import preflight

    preflight(args.model, corpora=[cfg.data, heal.data if heal.method != "none" else None])
    claim(args)
    rec = run_prune(load(args), cfg, args.out, heal=heal, score_only=args.score_only, overwrite=args.overwrite,
                    progress=progress())
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
