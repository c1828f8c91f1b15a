"""``llmshrink finetune``, ``llmshrink run RECIPE.yaml`` and ``llmshrink demo``: thin layers over
:mod:`llmshrink.tune.finetune` and :mod:`llmshrink.recipe`, registered in :mod:`llmshrink.cli`."""

from __future__ import annotations

import argparse
import json

from .cli import _load, _mb, _model_args, _print_table, _progress, command


def _finetune_args(p: argparse.ArgumentParser) -> None:
    from .config import FINETUNE_LOSSES, FINETUNE_METHODS, FinetuneConfig
    from .data.instruct import FORMATS
    from .data.templates import TEMPLATES

    d = FinetuneConfig()
    p.add_argument("model", help="model folder (plain or partially GPTQ-quantized), .gguf file, or alias")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--train", default=d.train, help="last:N trains the last N decoder blocks (default last:4)")
    p.add_argument("--lm-head", action="store_true", help="train lm_head too (untied from the embedding)")
    p.add_argument("--method", default=d.method, choices=FINETUNE_METHODS)
    p.add_argument("--data", default=d.data, help="corpus (name[:split], .txt, .jsonl, folder) or instruction JSONL")
    p.add_argument("--format", default=d.format, choices=FORMATS, help="text (language-model loss) or an "
                                                                       "instruction format (response-only loss)")
    p.add_argument("--template", default=d.template, choices=list(TEMPLATES), help="prompt template for "
                                                                                   "instruction data")
    p.add_argument("--skip-bad-lines", action="store_true", help="skip malformed JSONL lines instead of stopping")
    p.add_argument("--distill-from", default=None, help="original model: loss = KL from its next-token distribution")
    p.add_argument("--loss", default=None, choices=FINETUNE_LOSSES, help="default: kd with --distill-from, else task")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--epochs", type=float, default=None, help="passes over the data (default 1)")
    how.add_argument("--steps", type=int, default=None, help="optimizer steps")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--head-lr", type=float, default=None, help="learning rate of lm_head (default: --lr)")
    p.add_argument("--hidden-loss", type=float, default=d.hidden_loss,
                   help="with --distill-from: weight of an added loss matching the teacher's final hidden states")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--grad-accum", type=int, default=d.grad_accum)
    p.add_argument("--seqlen", type=int, default=d.seqlen)
    p.add_argument("--loss-tokens", type=float, default=d.loss_tokens,
                   help="fraction of each window's positions the loss is taken on, drawn afresh each step "
                        "(default 1: all); e.g. 0.25 makes distillation steps about twice as cheap")
    p.add_argument("--nsamples", type=int, default=None, help="text windows to train on (default: as many as the "
                                                              "steps use, or the whole corpus)")
    p.add_argument("--rank", type=int, default=d.rank, help="LoRA rank (--method lora)")
    p.add_argument("--alpha", type=float, default=d.alpha, help="LoRA alpha")
    p.add_argument("--eval-data", default=None, help="held-out corpus for the final perplexity (default: the "
                                                     "corpus' eval split)")
    p.add_argument("--eval-fraction", type=float, default=d.eval_fraction,
                   help="instruction examples held out and scored before and after")
    p.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint every N steps")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--seed", type=int, default=d.seed)
    _model_args(p)


@command("finetune", "fine-tune the last blocks (and lm_head) of a plain or partially quantized model",
         _finetune_args)
def cmd_finetune(args: argparse.Namespace) -> int:
    from .config import FinetuneConfig
    from .tune.finetune import finetune

    cfg = FinetuneConfig(train=args.train, lm_head=args.lm_head, method=args.method, data=args.data,
                         format=args.format, template=args.template, skip_bad_lines=args.skip_bad_lines,
                         loss=args.loss, distill_from=args.distill_from, epochs=args.epochs, steps=args.steps,
                         lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum, seqlen=args.seqlen,
                         loss_tokens=args.loss_tokens, head_lr=args.head_lr, hidden_loss=args.hidden_loss,
                         nsamples=args.nsamples, rank=args.rank, alpha=args.alpha, eval_data=args.eval_data,
                         eval_fraction=args.eval_fraction, save_every=args.save_every, seed=args.seed)
    lm = _load(args)
    res = finetune(lm, cfg, args.out, resume=args.resume, progress=_progress())
    rows = [("saved", str(res.out)), ("steps", str(res.stats.steps)), ("tokens", f"{res.stats.tokens:,}"),
            ("trainable parameters", f"{res.trainable:,}"),
            ("loss", f"{res.stats.mean_loss(True):.4f} -> {res.stats.mean_loss(False):.4f} ({cfg.loss})"),
            ("train seconds", f"{res.stats.seconds:.0f}")]
    ev = res.evaluation
    if "held_out_loss_before" in ev:
        rows.append(("held-out response loss", f"{ev['held_out_loss_before']:.4f} -> {ev['held_out_loss_after']:.4f}"))
    if "perplexity" in ev:
        rows.append((f"perplexity ({ev['eval_data']})", f"{ev['perplexity']:.4f}"))
    _print_table(rows)
    return 0


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML: model, out, and an ordered list of stages")
    p.add_argument("--out", default=None, help="output folder (default: the recipe's out)")
    p.add_argument("--json", action="store_true", help="print the run's summary as JSON")


@command("run", "run a recipe: prune / quantize / finetune / export / eval stages, resumable", _run_args)
def cmd_run(args: argparse.Namespace) -> int:
    from .recipe import load_recipe, run_recipe

    recipe = load_recipe(args.recipe)
    summary = run_recipe(recipe, out=args.out, progress=_progress())
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
    from .models.zoo import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--out", default="runs/demo", help="output folder of the demo's recipe (resumable)")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--steps", type=int, default=40, help="tail fine-tuning steps")
    p.add_argument("--calib-samples", type=int, default=32, help="GPTQ calibration windows")
    p.add_argument("--data", default="shakespeare:eval")
    p.add_argument("--max-tokens", type=int, default=32768, help="tokens of the corpus to evaluate")
    p.add_argument("--instruction", default="Write one sentence about the sea.")
    _model_args(p)


@command("demo", "partial quantization + tail fine-tuning on the default model, with a before/after table",
         _demo_args)
def cmd_demo(args: argparse.Namespace) -> int:
    from .eval.compare import compare_models
    from .recipe import demo_recipe, run_recipe

    recipe = demo_recipe(args.model, args.out, bits=args.bits, steps=args.steps, nsamples=args.calib_samples)
    summary = run_recipe(recipe, progress=_progress())
    final = summary["model"]
    rows = compare_models([("original", args.model), ("quantized + tail-tuned", final)], data=args.data,
                          max_tokens=args.max_tokens, instruction=args.instruction, device=args.device,
                          progress=_progress())
    print(f"\nllmshrink demo: {args.model}: GPTQ {args.bits}-bit g128 on all blocks but the last 4, then the last 4 "
          f"and lm_head fine-tuned by distillation ({args.steps} steps); stages in {summary['out']}\n")
    print("| model | perplexity | size on disk | decode ms/token | load s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['perplexity']:.3f} | {_mb(r['size_on_disk'])} | {r['ms_per_token']:.1f} | "
              f"{r['load_seconds']:.1f} |")
    print(f"\nperplexity on {args.data}, first {args.max_tokens} tokens; decode: greedy, batch 1")
    for r in rows:
        print(f"\n[{r['name']}] > {args.instruction}\n{r['answer']}")
    return 0
