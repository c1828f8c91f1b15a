"""Recipes: an ordered list of stages (prune, quantize, finetune, export, eval), each stage's model
feeding the next.

.. code-block:: yaml

    model: smollm2-135m
    out: runs/recipes/partial-3bit
    stages:
      - quantize: {bits: 3, group_size: 128, blocks: "0:26", calib: {nsamples: 128}}
      - finetune: {train: "last:4", lm_head: true, distill_from: original, steps: 150}
      - eval: {data: "shakespeare:eval"}
      - export: {type: q4_0}

Every stage's settings are the fields of its dataclass config (validated the same way as on the
command line; an unknown stage or field is reported with its YAML path). Stage ``k`` writes to
``OUT/<k>-<stage>/``; a stage whose output exists and whose hash (its settings and every earlier
stage's) matches is skipped on a re-run, so a killed run resumes at the stage it was in, and a
fine-tune inside it resumes from its last checkpoint. ``distill_from: original`` is the recipe's
input model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import EvalConfig, FinetuneConfig, GGUFConfig, HealConfig, PruneConfig, QuantConfig
from .errors import UserError
from .paths import atomic_file

log = logging.getLogger(__name__)


def _dataclass_from(cls, data: Any, where: str):
    """A dataclass from a YAML mapping; unknown fields and bad values name their YAML path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a mapping of settings, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"unknown field {where}.{unknown[0]}: known fields are {', '.join(sorted(names))}")
    try:
        return cls(**data)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    except TypeError as exc:
        raise UserError(f"{where}: {exc}") from None


def _split(data: Any, where: str, own: dict[str, Any]) -> tuple[dict, dict]:
    """Separate a stage's own keys (with defaults) from its config's fields."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a mapping of settings, got {type(data).__name__}")
    mine = {k: data.get(k, v) for k, v in own.items()}
    return mine, {k: v for k, v in data.items() if k not in own}


@dataclass
class Stage:
    name: str
    settings: dict  # as written in the recipe (hashed)
    where: str
    configs: dict[str, Any] = field(default_factory=dict)  # parsed, validated configs


# ---------------------------------------------------------------- stage kinds


def _parse_quantize(data, where):
    from .quant.job import CalibConfig

    own, rest = _split(data, where, {"calib": None, "blocks": None, "lm_head": False})
    return {"quant": _dataclass_from(QuantConfig, rest, where),
            "calib": _dataclass_from(CalibConfig, own["calib"], f"{where}.calib"),
            "blocks": own["blocks"], "lm_head": bool(own["lm_head"])}


def _run_quantize(model: str, out: Path, c: dict, ctx: dict, progress) -> dict:
    from .models.load import load_model
    from .quant.job import run_quantize

    lm = load_model(model, lazy_blocks=True)
    report, _ = run_quantize(lm, c["quant"], c["calib"], out, blocks=c["blocks"], lm_head=c["lm_head"],
                             progress=progress)
    return {"blocks": report.blocks, "seconds": report.seconds}


def _parse_prune(data, where):
    own, rest = _split(data, where, {"heal": None})
    return {"prune": _dataclass_from(PruneConfig, rest, where),
            "heal": _dataclass_from(HealConfig, own["heal"], f"{where}.heal")}


def _run_prune(model: str, out: Path, c: dict, ctx: dict, progress) -> dict:
    from .models.load import load_model
    from .prune.job import run_prune

    rec = run_prune(load_model(model), c["prune"], out, heal=c["heal"], progress=progress)
    return {"removed": rec.get("removed"), "blocks_after": rec.get("blocks_after")}


def _parse_finetune(data, where):
    if isinstance(data, dict) and data.get("distill_from") == "original":
        data = {**data, "distill_from": "@original"}
    return {"finetune": _dataclass_from(FinetuneConfig, data, where)}


def _run_finetune(model: str, out: Path, c: dict, ctx: dict, progress) -> dict:
    from .models.load import load_model
    from .tune.finetune import finetune

    cfg = c["finetune"]
    if cfg.distill_from == "@original":
        cfg = dataclasses.replace(cfg, distill_from=ctx["original"])
    res = finetune(load_model(model), cfg, out, resume=True, progress=progress)
    return {"steps": res.stats.steps, "loss_first": res.stats.mean_loss(True),
            "loss_last": res.stats.mean_loss(False), **res.evaluation}


def _parse_export(data, where):
    from .quant.job import CalibConfig

    own, rest = _split(data, where, {"calib": None})
    return {"gguf": _dataclass_from(GGUFConfig, rest, where),
            "calib": _dataclass_from(CalibConfig, own["calib"], f"{where}.calib")}


def _run_export(model: str, out: Path, c: dict, ctx: dict, progress) -> dict:
    from .export.gguf import export_gguf
    from .models.load import load_model

    out.mkdir(parents=True, exist_ok=True)
    rep = export_gguf(load_model(model), c["gguf"], out / "model.gguf", calib=c["calib"], progress=progress)
    return {"file": str(rep.path), "size": rep.size, "solved": len(rep.solved), "carried": len(rep.carried),
            "requantized": len(rep.requantized)}


def _parse_eval(data, where):
    return {"eval": _dataclass_from(EvalConfig, data, where)}


def _run_eval(model: str, out: Path, c: dict, ctx: dict, progress) -> dict:
    from .eval.run import evaluate_perplexity
    from .models.load import load_model

    rec = evaluate_perplexity(load_model(model), c["eval"], progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "eval.json") as tmp:
        tmp.write_text(json.dumps(rec, indent=2) + "\n")
    return {"perplexity": rec["perplexity"], "data": rec["data"], "tokens": rec["tokens"]}


@dataclass(frozen=True)
class StageKind:
    parse: Callable[[Any, str], dict]
    run: Callable[[str, Path, dict, dict, Any], dict]
    makes_model: bool  # its output folder is the next stage's model


STAGES: dict[str, StageKind] = {
    "prune": StageKind(_parse_prune, _run_prune, True),
    "quantize": StageKind(_parse_quantize, _run_quantize, True),
    "finetune": StageKind(_parse_finetune, _run_finetune, True),
    "export": StageKind(_parse_export, _run_export, False),
    "eval": StageKind(_parse_eval, _run_eval, False),
}


# ---------------------------------------------------------------- recipes


@dataclass
class Recipe:
    model: str
    out: str
    stages: list[Stage]
    source: str = "<dict>"


def parse_recipe(data: Any, source: str = "<dict>") -> Recipe:
    if not isinstance(data, dict):
        raise UserError(f"{source}: a recipe is a mapping with model, out and stages")
    unknown = sorted(set(data) - {"model", "out", "stages", "description"})
    if unknown:
        raise UserError(f"{source}: unknown field {unknown[0]}: a recipe has model, out, stages (and description)")
    for key in ("model", "out"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise UserError(f"{source}: {key} is missing: give the recipe's {key} as a string")
    raw = data.get("stages")
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{source}: stages must be a non-empty list")
    stages = []
    for i, item in enumerate(raw):
        where = f"stages[{i}]"
        if not isinstance(item, dict) or len(item) != 1:
            raise UserError(f"{source}: {where} must be one stage name with its settings, e.g. '- quantize: {{bits: 4}}'")
        (name, settings), = item.items()
        kind = STAGES.get(name)
        if kind is None:
            raise UserError(f"{source}: unknown stage {where}.{name}: use one of {', '.join(STAGES)}")
        try:
            configs = kind.parse(settings, f"{where}.{name}")
        except UserError as exc:
            raise UserError(f"{source}: {exc}") from None
        stages.append(Stage(name, settings or {}, f"{where}.{name}", configs))
    return Recipe(data["model"], data["out"], stages, source)


def load_recipe(path: str | Path) -> Recipe:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe {path} does not exist: give a YAML file (see recipes/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {exc}".splitlines()[0]) from None
    return parse_recipe(data, str(path))


def _stage_hash(prev: str, stage: Stage) -> str:
    text = json.dumps({"prev": prev, "stage": stage.name, "settings": stage.settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _done(out: Path, digest: str) -> dict | None:
    marker = out / ".llmshrink-stage.json"
    if not marker.is_file():
        return None
    rec = json.loads(marker.read_text())
    return rec if rec.get("hash") == digest else None


def _forget_stale_checkpoint(root: Path, stage_out: Path, digest: str) -> None:
    """A checkpoint left by an interrupted stage resumes only the same stage on the same input:
    when the stage or anything before it changed, it is removed (its hash is kept beside it)."""
    from .tune.finetune import checkpoint_dir

    started = root / f".{stage_out.name}.hash"
    if not started.is_file() or started.read_text() != digest:
        shutil.rmtree(checkpoint_dir(stage_out), ignore_errors=True)
        started.write_text(digest)


def run_recipe(recipe: Recipe, *, out: str | Path | None = None, progress=None) -> dict:
    """Run the stages in order, skipping those already done with the same settings."""
    root = Path(out or recipe.out)
    root.mkdir(parents=True, exist_ok=True)
    model, digest = recipe.model, hashlib.sha256(recipe.model.encode()).hexdigest()[:16]
    ctx = {"original": recipe.model}
    summary: dict = {"recipe": recipe.source, "out": str(root), "stages": []}
    for k, stage in enumerate(recipe.stages):
        kind = STAGES[stage.name]
        digest = _stage_hash(digest, stage)
        stage_out = root / f"{k}-{stage.name}"
        entry = {"name": stage.name, "output": str(stage_out)}
        prior = _done(stage_out, digest)
        if prior is not None:
            log.info("stage %d (%s): done before with the same settings, skipped", k, stage.name)
            entry.update(status="skipped (done)", seconds=0.0, result=prior.get("result"))
        else:
            _forget_stale_checkpoint(root, stage_out, digest)
            log.info("stage %d (%s) of %s -> %s", k, stage.name, model, stage_out)
            t0 = time.perf_counter()
            result = kind.run(model, stage_out, stage.configs, ctx, progress)
            seconds = time.perf_counter() - t0
            with atomic_file(stage_out / ".llmshrink-stage.json") as tmp:
                tmp.write_text(json.dumps({"hash": digest, "stage": stage.name, "settings": stage.settings,
                                           "input": model, "result": result, "seconds": seconds},
                                          indent=2, default=str) + "\n")
            entry.update(status="ran", seconds=seconds, result=result)
        summary["stages"].append(entry)
        if kind.makes_model:
            model = str(stage_out)
    summary["model"] = model
    return summary


def demo_recipe(model: str, out: str, *, bits: int = 4, steps: int = 40, nsamples: int = 32) -> Recipe:
    """``llmshrink demo``: the partial-quantization recipe with a small budget."""
    return parse_recipe({
        "model": model, "out": out,
        "stages": [
            {"quantize": {"bits": bits, "group_size": 128, "blocks": "0:-4", "calib": {"nsamples": nsamples}}},
            {"finetune": {"train": "last:4", "lm_head": True, "distill_from": "original", "steps": steps,
                          "batch_size": 4, "seqlen": 256, "nsamples": 64, "lr": 1e-4, "eval_data": "none"}},
        ],
    }, "demo")
