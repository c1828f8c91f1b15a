"""A release: the folder one publishes from a model llmshrink made, behind a recipe's ``release``
stage.

.. code-block:: yaml

    - release: {name: SmolLM2-135M-Instruct-GPTQ-4bit, ladder: [q4_k_m, q8_0]}

It holds the Hugging Face checkpoint (the previous stage's folder: weights, config, tokenizer and
llmshrink's records), the GGUF files of ``ladder`` in ``gguf/`` (each scored through llama.cpp,
with their own table and card), and one model card over both. With ``verify`` (the default) the
checkpoint is run in every consumer installed here (``llmshrink check``); the card's usage shows
what ran. Resumable: the ladder continues its own record (the recipe removes a release folder
made from other settings or another model).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..config import Config, Part
from ..data.calib import CalibConfig
from ..errors import UserError
from ..exporters.config import GGUFConfig
from ..paths import atomic_file, claim_output
from .card import CARD, GGUF_DIR, RELEASE, read_records, record_check, write_card
from .ladder import LadderConfig, run_ladder

log = logging.getLogger(__name__)

# Files of the stage folder that are llmshrink's bookkeeping, not the checkpoint's.
RECIPE_FILE = "recipe.yaml"
_NOT_COPIED = (CARD, RELEASE, RECIPE_FILE)


@dataclass
class ReleaseConfig(Config):
    """A release folder: its name, and whether the checkpoint is run in the other tools."""

    kind: ClassVar[str] = "release"
    name: str | None = field(default=None, metadata={
        "help": "the release's name, in its card and its GGUF files' names (default: the recipe's out folder's)"})
    verify: bool = field(default=True, metadata={
        "help": "run the checkpoint in every consumer installed here (llmshrink check); the card shows what ran"})

    def __post_init__(self) -> None:
        if self.name is not None:
            self.check(bool(str(self.name).strip()) and "/" not in str(self.name), "name",
                       "give a name without '/' (the hub's repository name, for example SmolLM2-135M-GPTQ)")


PARTS = (Part("release", ReleaseConfig), Part("ladder", LadderConfig), Part("gguf", GGUFConfig, skip=("type",)),
         Part("calib", CalibConfig, nested=True))


def _copy_checkpoint(src: Path, out: Path) -> list[str]:
    """The checkpoint's files (the top level of ``src``, not its card or hidden bookkeeping) into
    ``out``: hard links where the disk allows, copies otherwise, each appearing complete; returns
    their names."""
    copied = []
    for f in sorted(src.iterdir()):
        if not f.is_file() or f.name.startswith(".") or f.name in _NOT_COPIED:
            continue
        dst = out / f.name
        if not (dst.is_file() and os.path.samefile(f, dst)):  # a link made before is this very file
            with atomic_file(dst) as tmp:
                tmp.unlink()
                try:
                    os.link(f, tmp)
                except OSError:
                    shutil.copy2(f, tmp)
        copied.append(f.name)
    return copied


def run_release(model: str | Path, out: Path, rcfg: ReleaseConfig, ladder: LadderConfig, gcfg: GGUFConfig,
                calib: CalibConfig, *, name: str | None = None, recipe: str | None = None, progress=None) -> dict:
    """Write the release of ``model`` (a folder llmshrink wrote) into ``out``: the checkpoint, the
    GGUF files of ``ladder`` in ``out/gguf``, the card; then ``llmshrink check`` of the checkpoint
    when ``rcfg.verify``. ``name`` is the default release name (``rcfg.name`` wins); ``recipe``,
    the YAML text of the recipe that made it, is kept as ``recipe.yaml`` (the card's reproduce line)."""
    from ..models.load import load_model

    src = Path(model)
    if not (src.is_dir() and read_records(src)):
        raise UserError(f"a release is made from a model llmshrink wrote, and {model} is not one: put a quantize, "
                        "prune or finetune stage before the release stage")
    out = claim_output(out, inputs=(src,), resumes=True)
    out.mkdir(parents=True, exist_ok=True)
    name = rcfg.name or name or out.name
    record = {"name": name, "from": str(src)}
    if recipe:
        with atomic_file(out / RECIPE_FILE) as tmp:
            tmp.write_text(recipe)
        record["recipe"] = RECIPE_FILE
    with atomic_file(out / RELEASE) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    files = _copy_checkpoint(src, out)
    result: dict = {"folder": str(out), "name": name, "files": files}
    if ladder.ladder:
        load = lambda: load_model(str(src))  # noqa: E731  (a fresh copy for each solve)
        rep = run_ladder(load(), load, gcfg, ladder, out / GGUF_DIR, calib, progress=progress, name=name)
        result["gguf"] = {t: {k: r.get(k) for k in ("file", "size", "perplexity")} for t, r in rep.rows.items()}
    write_card(out)
    if rcfg.verify:
        from ..eval.check import check_output

        report = check_output(out)
        record_check(out, report.to_dict())
        result["check"] = {r.consumer: r.status for r in report.results}
        for r in report.failed:
            log.warning("release %s does not run in %s: %s", name, r.consumer, r.why)
    return result
