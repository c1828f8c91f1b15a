"""Where a model folder comes from: the GGUF file it was converted from, followed through the
folders llmshrink wrote (each records its input MODEL in ``llmshrink_<step>.json``).

Exporters carry the source's own description (GGUF ``general.*``: name, organization, license,
languages...) into the files they write, so a quantized or pruned model says what it was made of.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..paths import cache_dir
from .convert import MARKER, inspect_gguf, is_gguf
from .zoo import ALIASES

log = logging.getLogger(__name__)

STEPS = ("prune", "quantize", "finetune")  # each writes llmshrink_<step>.json into its output folder


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _input_of(folder: Path) -> str | None:
    """The MODEL the first step that wrote ``folder`` read (None if llmshrink did not write it)."""
    for step in STEPS:
        model = _read(folder / f"llmshrink_{step}.json").get("model")
        if model:
            return str(model)
    return None


def source_general(model: str | Path, depth: int = 8) -> dict:
    """The ``general.*`` metadata of the GGUF that ``model`` (a folder, a .gguf file or an alias)
    descends from, or {} when it descends from none (or the chain cannot be followed)."""
    spec = str(model)
    for _ in range(depth):
        path = Path(spec).expanduser()
        if spec in ALIASES and not path.exists():
            path = cache_dir() / "models" / ALIASES[spec].name
        if path.is_file():
            return dict(inspect_gguf(path)["general"]) if is_gguf(path) else {}
        if not path.is_dir():
            return {}
        marker = _read(path / MARKER)
        if "general" in marker:
            return dict(marker["general"])
        if marker.get("converted_from") and Path(marker["converted_from"]).is_file():
            return dict(inspect_gguf(Path(marker["converted_from"]))["general"])
        spec = _input_of(path)
        if spec is None:
            return {}
    log.warning("%s: its source could not be followed past %d steps", model, depth)
    return {}
