"""The prune job behind ``llmshrink prune``: score blocks, remove the least important, heal, save."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from pathlib import Path

import torch

from ..config import Part, command_line
from ..data.calib import corpus_windows
from ..exporters.hf import release_dtype, save_folder
from ..models.load import LoadedModel
from ..paths import atomic_dir, claim_output
from ..pruning.config import HealConfig, PruneConfig
from ..pruning.depth import remove_blocks
from ..pruning.plot import plot_scores
from ..pruning.scores import BlockScores, score_blocks
from .card import CARD, card_file
from .resume import RecordState

log = logging.getLogger(__name__)


# The settings of a prune job: flags of ``llmshrink prune`` (healing's prefixed ``--heal-``) and
# fields of a recipe's prune stage (healing's under ``heal:``).
PARTS = (Part("prune", PruneConfig), Part("heal", HealConfig, prefix="heal_", nested=True))


def scoring_batches(lm: LoadedModel, cfg: PruneConfig) -> list[torch.Tensor] | None:
    """The scoring windows, in batches (None for criteria that need no data)."""
    if cfg.criterion == "magnitude":
        return None
    windows = corpus_windows(cfg.data, lm.tokenizer, cfg.nsamples, cfg.seqlen, seed=cfg.seed, role="scoring",
                             max_tokens=max(cfg.nsamples * cfg.seqlen * 50, 1_000_000))
    return list(windows.split(cfg.batch_size))


def remove_least_important(lm: LoadedModel, cfg: PruneConfig, batches, *, progress=None,
                           state: RecordState | None = None) -> tuple[list[int], list[BlockScores]]:
    """Remove the least important blocks from ``lm.model`` in place; returns their original
    indices and the scores that chose them.

    One-shot: score once, remove the ``n`` least important. Iterative: score, remove the least
    important, re-score the smaller model, ... one block at a time. ``state`` keeps each round's
    scores; the rounds it holds already are not scored again."""
    saved = [BlockScores(**r) for r in (state.data.get("rounds", []) if state is not None else [])]
    original = list(range(len(lm.arch.blocks(lm.model))))
    n = cfg.n_remove(len(original))
    per_round = 1 if cfg.iterative else n
    removed, history = [], []
    while len(removed) < n:
        fresh = len(history) >= len(saved)
        s = score_blocks(lm.model, lm.arch, batches, cfg.criterion, progress=progress) if fresh else saved[len(history)]
        worst = s.order(cfg.keep_first, cfg.keep_last)[:per_round]
        history.append(s)
        if fresh and state is not None:
            state.save({"rounds": [dataclasses.asdict(h) for h in history]})
        removed += [original[i] for i in worst]
        remove_blocks(lm.model, lm.arch, worst)
        original = [b for i, b in enumerate(original) if i not in worst]
        log.info("removed blocks %s by %s; %d blocks left", sorted(removed[-len(worst):]), cfg.criterion,
                 len(original))
    return sorted(removed), history


def run_prune(lm: LoadedModel, cfg: PruneConfig, out: Path, *, heal: HealConfig | None = None,
              score_only: bool = False, overwrite: bool = False, progress=None) -> dict:
    """Score (and unless ``score_only``, remove and heal); write everything into ``out`` atomically
    (an existing ``out`` only with ``overwrite``)."""
    out = claim_output(out, inputs=lm.sources, overwrite=overwrite,
                       need_bytes=0 if score_only else lm.size_on_disk)
    heal = heal or HealConfig()
    n_blocks = len(lm.arch.blocks(lm.model))
    if not score_only:
        cfg.n_remove(n_blocks)  # refuse a bad count before any scoring
    t0 = time.perf_counter()
    batches = scoring_batches(lm, cfg)
    record: dict = {"model": lm.name, "config": cfg.to_dict(), "blocks_before": n_blocks,
                    "parameters_before": lm.num_parameters,
                    "command": command_line("prune", lm.name, out, PARTS, {"prune": cfg, "heal": heal})}
    if score_only:
        s = score_blocks(lm.model, lm.arch, batches, cfg.criterion, progress=progress)
        record["scores"] = [dataclasses.asdict(s)]
        with atomic_dir(out) as tmp:
            (tmp / "block_scores.json").write_text(json.dumps(record, indent=2) + "\n")
            plot_scores(s, tmp / "block_scores.png", title=f"{lm.name}: block importance")
        return record
    teacher = copy.deepcopy(lm.model) if heal.method != "none" and heal.loss != "lm" else None
    # each round of scores is kept beside the output: a killed run does not score it again
    with RecordState(out, {**lm.identity, "prune": cfg.to_dict()}, discard_other=overwrite, what="pruning") as state:
        removed, history = remove_least_important(lm, cfg, batches, progress=progress, state=state)
        _heal_and_save(lm, heal, teacher, out, record, removed, history, n_blocks, t0, progress,
                       dtype=release_dtype(cfg.save_dtype, lm.path, packed=False))
    return record


def _heal_and_save(lm: LoadedModel, heal: HealConfig, teacher, out: Path, record: dict, removed: list[int],
                   history: list, n_blocks: int, t0: float, progress, dtype: torch.dtype | None = None) -> None:
    """Heal the pruned model if asked, complete ``record``, write the output folder."""
    kept = [i for i in range(n_blocks) if i not in removed]
    log.info("removed blocks %s by %s; %d of %d blocks left", removed, record["config"]["criterion"], len(kept),
             n_blocks)
    record.update(scores=[dataclasses.asdict(s) for s in history], removed=removed, kept=kept,
                  blocks_after=len(kept), score_seconds=sum(s.seconds for s in history))
    if heal.method == "lora":
        from ..pruning.heal import heal_lora

        lm.model, stats = heal_lora(lm.model, lm.arch, lm.tokenizer, heal, teacher=teacher, progress=progress)
        record["heal"] = {"config": heal.to_dict(), "steps": stats.steps, "tokens": stats.tokens,
                          "seconds": stats.seconds, "loss_first": stats.mean_loss(True),
                          "loss_last": stats.mean_loss(False)}
    record["parameters_after"] = lm.num_parameters
    record["seconds"] = time.perf_counter() - t0
    save_folder(lm.model, lm.tokenizer, out, dtype=dtype, files={
        "llmshrink_prune.json": json.dumps(record, indent=2) + "\n",
        "block_scores.png": lambda p: plot_scores(history[0], p, removed=removed, title=f"{lm.name}: block importance"),
        CARD: card_file(out),
    })
