"""The finetune job behind ``llmshrink finetune``: train the tail, evaluate it, save the (mixed)
checkpoint with its source's quantization records."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import Part, command_line
from ..data.corpora import NAMED
from ..data.mix import parse_mix
from ..errors import UserError
from ..eval.config import EvalConfig
from ..eval.run import evaluate_perplexity
from ..exporters.hf import Extra, release_dtype, round_to, save_folder
from ..models.load import LoadedModel
from ..paths import claim_output
from ..tune.config import FinetuneConfig
from ..tune.finetune import check_tail, load_like, train_tail
from ..tune.parallel import Parallel
from ..tune.train import TrainStats
from .card import CARD, card_file

PARTS = (Part("finetune", FinetuneConfig),)


@dataclass
class FinetuneResult:
    out: Path
    stats: TrainStats
    trainable: int
    evaluation: dict = field(default_factory=dict)
    seconds: float = 0.0
    saved: bool = True  # False in the data-parallel processes other than the main one


def checkpoint_dir(out: Path) -> Path:
    """Where a fine-tune into ``out`` keeps its checkpoint (beside the output, hidden)."""
    return out.parent / f".{out.name}.checkpoint"


def finetune(lm: LoadedModel, cfg: FinetuneConfig, out: Path, *, resume: bool = False,
             eval_cfg: EvalConfig | None = None, overwrite: bool = False, parallel: Parallel | None = None,
             progress=None) -> FinetuneResult:
    """Train the tail of ``lm`` in place, evaluate it, and save it to ``out`` (an existing ``out``
    only with ``overwrite``). Started by ``accelerate launch`` (several processes; ``parallel``,
    default from the environment), each process trains on its share of every step and only the
    main one scores and saves."""
    t0 = time.perf_counter()
    parallel = parallel or Parallel.from_env()
    parallel.check(cfg.grad_accum)
    out = claim_output(out, inputs=lm.sources, overwrite=overwrite, need_bytes=2 * lm.size_on_disk)
    check_resume(out, resume)
    ckpt_dir = checkpoint_dir(out)
    check_tail(lm, cfg)  # before minutes of scoring
    corpora = eval_corpora(cfg, eval_cfg) if parallel.is_main else {}
    reference = load_like(lm, cfg.distill_from) if cfg.distill_from and corpora else None
    before: dict = {}

    def score_before() -> None:
        if cfg.eval_before and not resume:
            before.update(score(lm, corpora, reference, progress))

    run = train_tail(lm, cfg, ckpt_dir, resume=resume, original=reference, before=score_before, parallel=parallel,
                     progress=progress)
    if not parallel.is_main:  # the main process holds the same weights, and saves them
        return FinetuneResult(out, run.stats, run.trainable, run.evaluation, time.perf_counter() - t0, saved=False)
    evaluation = run.evaluation
    round_to(lm.model, _release_dtype(lm, cfg.save_dtype))  # the scores below are the saved model's
    after = score(lm, corpora, reference, progress)
    reference = None  # the original is not needed for saving
    for key, ecfg in corpora.items():
        evaluation[key] = {"data": ecfg.data, "tokens": after[key]["tokens"], "after": after[key]}
        if key in before:
            evaluation[key]["before"] = before[key]
    if "held_out" in after:  # the figure earlier records had
        evaluation["perplexity"], evaluation["eval_data"] = after["held_out"]["perplexity"], corpora["held_out"].data
    result = FinetuneResult(out, run.stats, run.trainable, evaluation)
    stats = run.stats
    record = {"model": lm.name, "config": cfg.to_dict(), "blocks": [run.first, run.first + cfg.n_train],
              "steps": stats.steps, "tokens": stats.tokens, "train_seconds": stats.seconds,
              "loss_first": stats.mean_loss(True), "loss_last": stats.mean_loss(False), "losses": stats.losses,
              "trainable_parameters": result.trainable, "evaluation": evaluation,
              "command": command_line("finetune", lm.name, out, PARTS, {"finetune": cfg})}
    save_finetuned(lm, out, {"llmshrink_finetune.json": json.dumps(record, indent=2) + "\n", CARD: card_file(out)},
                   save_dtype=cfg.save_dtype)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    result.seconds = time.perf_counter() - t0
    return result


def eval_corpora(cfg: FinetuneConfig, eval_cfg: EvalConfig | None = None) -> dict[str, EvalConfig]:
    """What a fine-tune is scored on: ``held_out`` (the tuning corpus' held-out split, or
    ``eval_data``) and ``out_of_domain`` (``ood_data``), each unless turned off with none; in
    windows of the training length."""
    max_tokens = cfg.eval_tokens or None
    out = {}
    eval_data = cfg.eval_data or eval_split(cfg)
    if eval_data is not None and eval_data != "none":
        out["held_out"] = eval_cfg or EvalConfig(data=eval_data, seqlen=cfg.seqlen, max_tokens=max_tokens)
    if cfg.ood_data is not None and cfg.ood_data != "none":
        out["out_of_domain"] = EvalConfig(data=cfg.ood_data, seqlen=cfg.seqlen, max_tokens=max_tokens)
    return out


def score(lm: LoadedModel, corpora: dict[str, EvalConfig], reference: LoadedModel | None, progress=None) -> dict:
    """Perplexity on each corpus; with the original model, the KL divergence from it and its own perplexity."""
    out = {}
    for key, ecfg in corpora.items():
        r = evaluate_perplexity(lm, ecfg, reference=reference, progress=progress)
        out[key] = {"perplexity": r["perplexity"], "tokens": r["tokens"]}
        if reference is not None:
            out[key].update(kl=r["kl"], original_perplexity=r["reference_perplexity"])
    return out


def recovery(entry: dict) -> float | None:
    """Share of the gap to the original closed by training: (before - after) / (before - original)."""
    before, after = entry.get("before"), entry["after"]
    if before is None or "original_perplexity" not in after:
        return None
    gap = before["perplexity"] - after["original_perplexity"]
    return (before["perplexity"] - after["perplexity"]) / gap if gap > 0 else None


def check_resume(out: Path, resume: bool) -> None:
    """A checkpoint beside ``out`` is continued only with ``resume``; ``resume`` needs one."""
    ckpt_dir = checkpoint_dir(out)
    if ckpt_dir.exists() and not resume:
        raise UserError(f"{ckpt_dir} holds the checkpoint of an interrupted run: pass --resume to continue it, "
                        "or delete it to start over")
    if resume and not ckpt_dir.exists():
        raise UserError(f"--resume: no checkpoint of an interrupted run into {out} (looked for {ckpt_dir}): "
                        "drop --resume to start")


def eval_split(cfg: FinetuneConfig) -> str | None:
    """A named corpus' held-out split, for text data (``shakespeare:calib`` -> ``shakespeare:eval``;
    for a mix, its first part's)."""
    if cfg.format != "text":
        return None
    name, _, split = parse_mix(cfg.data)[0].data.partition(":")
    named = NAMED.get(name)
    if named is None or "eval" not in named.splits or split == "eval":
        return None
    return f"{name}:eval"


def _release_dtype(lm: LoadedModel, save_dtype: str) -> torch.dtype:
    packed = "quantization_config" in json.loads((lm.path / "config.json").read_text())
    return release_dtype(save_dtype, lm.path, packed=packed)


def save_finetuned(lm: LoadedModel, out: Path, extra_files: dict[str, Extra], save_dtype: str = "auto") -> Path:
    """Save the model (packed layers stay packed) with its source's ``quantization_config`` and
    quantization records."""
    src = json.loads((lm.path / "config.json").read_text())
    return save_folder(lm.model, lm.tokenizer, out, quantization_config=src.get("quantization_config"),
                       dtype=_release_dtype(lm, save_dtype),
                       files=extra_files, copy_from=lm.path,
                       copy=("llmshrink_quantize.json", "quantize_layers.jsonl"))
