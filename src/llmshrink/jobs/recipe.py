"""Recipes: an ordered list of stages (prune, quantize, finetune, export, eval, release), each
stage's model feeding the next.

.. code-block:: yaml

    model: smollm2-135m
    out: runs/recipes/partial-3bit
    stages:
      - quantize: {bits: 3, group_size: 128, blocks: "0:26", calib: {nsamples: 128}}
      - finetune: {train: "last:4", lm_head: true, distill_from: original, steps: 150}
      - eval: {data: "shakespeare:eval"}
      - export: {type: q4_0}
      - release: {name: SmolLM2-135M-partial-3bit, ladder: [q4_k_m, q8_0]}

Every stage's settings are the fields of its dataclass config (validated the same way as on the
command line; an unknown stage or field is reported with its YAML path). Stage ``k`` writes to
``OUT/<k>-<stage>/``; a stage whose output exists and whose hash (its settings and every earlier
stage's) matches is skipped on a re-run, so a killed run resumes at the stage it was in, and a
fine-tune inside it resumes from its last checkpoint. ``distill_from: original`` is the recipe's
input model. ``release`` writes the folder one publishes (:mod:`.release`): the last model's
checkpoint, its GGUF files, one card.
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

from ..config import Part, from_mapping
from ..errors import UserError
from ..eval.config import EvalConfig
from ..paths import atomic_file, check_inputs, claim_output
from ..tune.config import DISTILL_DATA
from . import export as export_job
from . import finetune as finetune_job
from . import prune as prune_job
from . import quantize as quantize_job
from . import release as release_job
from .card import read_records, record_eval
from .preflight import preflight

log = logging.getLogger(__name__)

RECIPE_MARKER = ".llmshrink-recipe.json"  # a recipe's output folder says so


@dataclass
class Stage:
    name: str
    settings: dict  # as written in the recipe (hashed)
    where: str
    configs: dict[str, Any] = field(default_factory=dict)  # parsed, validated configs, by part key


# ---------------------------------------------------------------- stage kinds


def _run_quantize(model: str, out: Path, c: dict, ctx: dict, progress) -> dict:
    from ..models.load import load_model

    lm = load_model(model, lazy_blocks=True)
    report, _ = quantize_job.run_quantize(lm, c["quant"], c["calib"], out, blocks=c["scope"].blocks,
                                          lm_head=c["scope"].lm_head, save_dtype=c["scope"].save_dtype,
                                          activations=c["scope"].activations, mix=c.get("mix"), overwrite=True,
                                          progress=progress)
    return {"blocks": report.blocks, "seconds": report.seconds}


def _run_prune(model: str, out: Path, c: dict, ctx: dict, progress) -> dict:
    from ..models.load import load_model

    rec = prune_job.run_prune(load_model(model), c["prune"], out, heal=c["heal"], overwrite=True, progress=progress)
    return {"removed": rec.get("removed"), "blocks_after": rec.get("blocks_after")}


def _finetune_settings(data: Any) -> Any:
    if isinstance(data, dict) and data.get("distill_from") == "original":
        return {**data, "distill_from": "@original"}
    return data


def _run_finetune(model: str, out: Path, c: dict, ctx: dict, progress) -> dict:
    from ..models.load import load_model

    cfg = c["finetune"]
    if cfg.distill_from == "@original":
        cfg = dataclasses.replace(cfg, distill_from=ctx["original"])
    resume = finetune_job.checkpoint_dir(out).exists()
    res = finetune_job.finetune(load_model(model), cfg, out, resume=resume, overwrite=True, progress=progress)
    return {"steps": res.stats.steps, "loss_first": res.stats.mean_loss(True),
            "loss_last": res.stats.mean_loss(False), **res.evaluation}


def _run_export(model: str, out: Path, c: dict, ctx: dict, progress) -> dict:
    from ..models.load import load_model

    out.mkdir(parents=True, exist_ok=True)
    fmt, ladder = c["format"].format, c["ladder"]
    target = out / "ladder" if ladder.ladder else out / "model.gguf" if fmt == "gguf" else out / "model"
    rep = export_job.run_export(load_model(model), fmt, c["gguf"] if fmt == "gguf" else c["hf"], target,
                                calib=c["calib"], progress=progress, ladder=ladder, load=lambda: load_model(model),
                                overwrite=True)
    if ladder.ladder:
        return {"folder": str(rep.out), "files": {t: r["file"] for t, r in rep.rows.items()}}
    if fmt != "gguf":
        return {"folder": str(rep)}
    return {"file": str(rep.path), "size": rep.size, "solved": len(rep.solved), "carried": len(rep.carried),
            "requantized": len(rep.requantized)}


def _run_release(model: str, out: Path, c: dict, ctx: dict, progress) -> dict:
    return release_job.run_release(model, out, c["release"], c["ladder"], c["gguf"], c["calib"], name=ctx["name"],
                                   recipe=ctx["yaml"], progress=progress)


def _run_eval(model: str, out: Path, c: dict, ctx: dict, progress) -> dict:
    from ..eval.run import evaluate_perplexity
    from ..models.load import load_model

    rec = evaluate_perplexity(load_model(model), c["eval"], progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "eval.json") as tmp:
        tmp.write_text(json.dumps(rec, indent=2) + "\n")
    record_eval(Path(model), rec)  # a model a stage made keeps the score on its card (as llmshrink eval DIR does)
    return {"perplexity": rec["perplexity"], "data": rec["data"], "tokens": rec["tokens"]}


@dataclass(frozen=True)
class StageKind:
    parts: tuple[Part, ...]  # the job's configs: the stage's fields (the same as its command's flags)
    run: Callable[[str, Path, dict, dict, Any], dict]
    makes_model: bool  # its output folder is the next stage's model
    prepare: Callable[[Any], Any] = lambda data: data  # rewrites the settings before parsing

    def parse(self, data: Any, where: str) -> dict:
        return from_mapping(self.prepare(data), self.parts, where)


STAGES: dict[str, StageKind] = {
    "prune": StageKind(prune_job.PARTS, _run_prune, True),
    "quantize": StageKind(quantize_job.PARTS, _run_quantize, True),
    "finetune": StageKind(finetune_job.PARTS, _run_finetune, True, _finetune_settings),
    "export": StageKind(export_job.PARTS, _run_export, False),
    "eval": StageKind((Part("eval", EvalConfig),), _run_eval, False),
    "release": StageKind(release_job.PARTS, _run_release, False),
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
        if name == "release" and not any(STAGES[s.name].makes_model for s in stages) \
                and not read_records(Path(data["model"]).expanduser()):
            raise UserError(f"{source}: {where}.release publishes a model llmshrink made: put a quantize, prune or "
                            "finetune stage before it, or give such a folder as the recipe's model")
        stages.append(Stage(name, settings or {}, f"{where}.{name}", configs))
    return Recipe(data["model"], data["out"], stages, source)


def recipe_yaml(recipe: Recipe) -> str:
    """The recipe as YAML that :func:`load_recipe` reads back to the same stages."""
    import yaml

    data = {"model": recipe.model, "out": recipe.out, "stages": [{s.name: s.settings} for s in recipe.stages]}
    return f"# {recipe.source}\n" + yaml.safe_dump(data, sort_keys=False)


def load_recipe(path: str | Path) -> Recipe:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe {path} does not exist: give a YAML file (see recipes/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path} is not valid YAML ({what}{where}): fix the recipe there") from None
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


def _forget_stale_output(root: Path, stage_out: Path, digest: str) -> None:
    """What an interrupted stage left (a fine-tune's checkpoint beside its folder, a release's
    GGUF files) resumes only the same stage on the same input: when the stage or anything before
    it changed, both are removed (the hash it was started with is kept beside them)."""
    started = root / f".{stage_out.name}.hash"
    if not started.is_file() or started.read_text() != digest:
        shutil.rmtree(finetune_job.checkpoint_dir(stage_out), ignore_errors=True)
        shutil.rmtree(stage_out, ignore_errors=True)
        started.write_text(digest)


def _preflight(recipe: Recipe) -> None:
    """The recipe's model, and every corpus and teacher its stages name, checked before any stage runs."""
    corpora, models = [], []
    for stage in recipe.stages:
        for cfg in stage.configs.values():
            corpora += [v for v in (getattr(cfg, f, None) for f in ("data", "eval_data", "ood_data"))
                        if isinstance(v, str) and v != "none"]
            teacher = getattr(cfg, "distill_from", None)
            if teacher and not teacher.startswith("@"):
                models.append(teacher)
    preflight(recipe.model, corpora=corpora, models=models)


def _check_root(root: Path, recipe: Recipe) -> None:
    """Refuse, before anything is made, a recipe output folder that is the model's folder, inside
    it or holding it, or a folder of other files."""
    if not root.absolute().parent.is_dir():  # made by _open_root: nothing there yet
        check_inputs(root, (recipe.model,))
        return
    claim_output(root, inputs=(recipe.model,), resumes=True)
    if root.is_dir() and any(root.iterdir()) and not (root / RECIPE_MARKER).is_file() \
            and not any(root.glob("*/.llmshrink-stage.json")):
        raise UserError(f"{root} holds files that are not a recipe's outputs: give the recipe another out")


def _open_root(root: Path, recipe: Recipe) -> Path:
    """The recipe's output folder (checked by :func:`_check_root`), made or continued."""
    root.mkdir(parents=True, exist_ok=True)
    marker = root / RECIPE_MARKER
    if not marker.is_file():
        with atomic_file(marker) as tmp:
            tmp.write_text(json.dumps({"recipe": recipe.source, "model": recipe.model}) + "\n")
    return root


def run_recipe(recipe: Recipe, *, out: str | Path | None = None, progress=None) -> dict:
    """Run the stages in order, skipping those already done with the same settings."""
    root = Path(out or recipe.out).expanduser()
    _check_root(root, recipe)
    _preflight(recipe)
    root = _open_root(root, recipe)
    model, digest = recipe.model, hashlib.sha256(recipe.model.encode()).hexdigest()[:16]
    ctx = {"original": recipe.model, "name": root.name, "yaml": recipe_yaml(recipe)}
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
            _forget_stale_output(root, stage_out, digest)
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
    """``llmshrink demo``: the partial-quantization recipe with a small budget: the tail and the
    quantized blocks' scales distilled from the original on the recipe's three-genre text, a
    fresh window for every one a step reads, in bfloat16 autocast where the CPU has it natively;
    its own table scores the result, so the fine-tune does not."""
    return parse_recipe({
        "model": model, "out": out,
        "stages": [
            {"quantize": {"bits": bits, "group_size": 128, "blocks": "0:-4", "calib": {"nsamples": nsamples}}},
            {"finetune": {"train": "last:4", "distill_from": "original", "loss": "kd", "tune_scales": True,
                          "data": DISTILL_DATA, "steps": steps, "batch_size": 4, "seqlen": 256, "lr": 1e-4,
                          "amp": "auto", "eval_data": "none", "ood_data": "none"}},
        ],
    }, "demo")
