"""``llmshrink finetune``, ``llmshrink run RECIPE.yaml`` and ``llmshrink demo``: thin layers over
:mod:`llmshrink.jobs.finetune` and :mod:`llmshrink.jobs.recipe`."""

from __future__ import annotations

import argparse
import json

from .common import add_out, claim, command, config, config_args, load_part, mb, print_table, progress


def _finetune_args(p: argparse.ArgumentParser) -> None:
    from ..jobs.finetune import PARTS

    p.add_argument("model", help="model folder (plain or partially GPTQ-quantized), .gguf file, or alias")
    add_out(p, "output folder (written atomically)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    config_args(p, PARTS)


@command("finetune", "fine-tune the last blocks (and lm_head) of a plain or partially quantized model",
         _finetune_args)
def cmd_finetune(args: argparse.Namespace) -> int:
    from ..jobs.finetune import PARTS, check_resume, eval_corpora, finetune

    (part,) = PARTS
    cfg = config(args, part)
    from ..jobs.preflight import preflight

    preflight(args.model, corpora=[cfg.data, *(e.data for e in eval_corpora(cfg).values())],
              models=[cfg.distill_from])
    check_resume(claim(args), args.resume)
    from ..tune.parallel import Parallel

    parallel = Parallel.from_env()
    parallel.check(cfg.grad_accum)
    lcfg = config(args, load_part())
    if parallel.world > 1 and lcfg.device.startswith("cuda"):
        lcfg.device = parallel.device  # one GPU per process
    res = finetune(lcfg.load(args.model), cfg, args.out, resume=args.resume, overwrite=args.overwrite,
                   parallel=parallel, progress=progress())
    if not res.saved:  # another data-parallel process; the main one reports
        return 0
    rows = [("saved", str(res.out)), ("steps", str(res.stats.steps)), ("tokens", f"{res.stats.tokens:,}"),
            ("trainable parameters", f"{res.trainable:,}"),
            ("loss", f"{res.stats.mean_loss(True):.4f} -> {res.stats.mean_loss(False):.4f} ({cfg.loss})"),
            ("train seconds", f"{res.stats.seconds:.0f}")]
    ev = res.evaluation
    if "held_out_loss_before" in ev:
        rows.append(("held-out response loss", f"{ev['held_out_loss_before']:.4f} -> {ev['held_out_loss_after']:.4f}"))
    for key in ("held_out", "out_of_domain"):
        if key in ev:
            rows.append((f"perplexity ({ev[key]['data']})", before_after(ev[key])))
    print_table(rows)
    return 0


def before_after(entry: dict) -> str:
    """``42.55 -> 39.60 (original 34.00, 34.5 % recovered); KL 0.281 -> 0.190``, as much as is known."""
    from ..jobs.finetune import recovery

    before, after = entry.get("before"), entry["after"]
    text = (f"{before['perplexity']:.4f} -> " if before else "") + f"{after['perplexity']:.4f}"
    if "original_perplexity" in after:
        rec = recovery(entry)
        text += f" (original {after['original_perplexity']:.4f}" + (f", {100 * rec:.1f} % recovered)" if rec is not None
                                                                   else ")")
        text += "; KL " + (f"{before['kl']:.4f} -> " if before else "") + f"{after['kl']:.4f}"
    return text


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML: model, out, and an ordered list of stages")
    p.add_argument("--out", default=None, help="output folder (default: the recipe's out)")
    p.add_argument("--json", action="store_true", help="print the run's summary as JSON")


@command("run", "run a recipe: prune / quantize / finetune / export / eval stages, resumable", _run_args)
def cmd_run(args: argparse.Namespace) -> int:
    from ..jobs.recipe import load_recipe, run_recipe

    recipe = load_recipe(args.recipe)
    summary = run_recipe(recipe, out=args.out, progress=progress())
    if args.json:
        print(json.dumps(summary))
        return 0
    print("| stage | output | status | seconds |")
    print("|---|---|---|---:|")
    for s in summary["stages"]:
        print(f"| {s['name']} | {s['output']} | {s['status']} | {s['seconds']:.0f} |")
    for s in summary["stages"]:
        if s.get("result"):
            print(f"\n{s['name']}: {json.dumps(s['result'])}")
    return 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    from ..models.zoo import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--out", default="runs/demo", help="output folder of the demo's recipe (resumable)")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--steps", type=int, default=40, help="tail fine-tuning steps")
    p.add_argument("--calib-samples", type=int, default=32, help="GPTQ calibration windows")
    p.add_argument("--data", default="shakespeare:eval")
    p.add_argument("--max-tokens", type=int, default=32768, help="tokens of the corpus to evaluate")
    p.add_argument("--instruction", default="Write one sentence about the sea.")
    config_args(p, [], model=True)


@command("demo", "partial quantization + tail fine-tuning on the default model, with a before/after table",
         _demo_args)
def cmd_demo(args: argparse.Namespace) -> int:
    from ..eval.compare import compare_models
    from ..jobs.recipe import demo_recipe, run_recipe
    from .common import load_part

    device = config(args, load_part()).device
    recipe = demo_recipe(args.model, args.out, bits=args.bits, steps=args.steps, nsamples=args.calib_samples)
    summary = run_recipe(recipe, progress=progress())
    final = summary["model"]
    rows = compare_models([("original", args.model), ("quantized + tail-tuned", final)], data=args.data,
                          max_tokens=args.max_tokens, instruction=args.instruction, device=device,
                          progress=progress())
    print(f"\nllmshrink demo: {args.model}: GPTQ {args.bits}-bit g128 on all blocks but the last 4, then the last 4 "
          f"and the quantized blocks' scales fine-tuned by distillation on plays, speeches and a novel "
          f"({args.steps} steps); stages in "
          f"{summary['out']}\n")
    print("| model | perplexity | size on disk | decode ms/token | load s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['perplexity']:.3f} | {mb(r['size_on_disk'])} | {r['ms_per_token']:.1f} | "
              f"{r['load_seconds']:.1f} |")
    print(f"\nperplexity on {args.data}, first {args.max_tokens} tokens; decode: greedy, batch 1")
    for r in rows:
        print(f"\n[{r['name']}] > {args.instruction}\n{r['answer']}")
    return 0
