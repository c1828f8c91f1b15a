"""Model cards: the ``README.md`` of every output folder, in Hugging Face conventions.

A card is rendered from the folder alone (its ``llmshrink_*.json`` records, ``config.json`` and
files), so ``llmshrink card DIR`` gives the same card again, and a newer one after more records
(``llmshrink eval DIR`` keeps its scores in ``llmshrink_evals.json``). It holds: YAML metadata
(``base_model`` and the relation, licence and languages carried from the source, tags,
``model-index`` with the measured perplexities), what was done in words, the measured table, the
files, how to use the folder, the data and its licence, and the commands that reproduce it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import UserError
from ..models.origin import STEPS
from ..models.zoo import ALIASES
from ..paths import atomic_file
from .card_text import Source, body, metadata

log = logging.getLogger(__name__)

CARD = "README.md"
EVALS = "llmshrink_evals.json"
CHECKS = "llmshrink_check.json"
RELEASE = "llmshrink_release.json"  # a release folder's name (its card's and files')
GGUF_DIR = "gguf"  # a release folder's GGUF files, with their own ladder record and card


def read_records(folder: Path) -> dict[str, dict]:
    """The ``llmshrink_<step>.json`` records ``folder`` holds, in the order their steps happen (a
    tuned folder keeps its quantize record)."""
    out = {}
    for step in STEPS:
        path = folder / f"llmshrink_{step}.json"
        if path.is_file():
            out[step] = json.loads(path.read_text())
    return out


def source_of(model: str) -> Source:
    """The source's hub id, licence and languages: from the alias table, from the card of a folder
    llmshrink made (carried on), or from a Hugging Face folder's own card and config."""
    alias = ALIASES.get(model)
    if alias is not None:
        return Source(model, alias.base_model, alias.license, list(alias.languages))
    path = Path(model)
    if not path.is_dir():
        return Source(model)
    meta = _card_metadata(path / CARD)
    if read_records(path):  # one of ours: its base is ours too
        return Source(model, meta.get("base_model"), meta.get("license"), _as_list(meta.get("language")))
    base = None
    if (path / "config.json").is_file():
        name = json.loads((path / "config.json").read_text()).get("_name_or_path") or ""
        base = name if name.count("/") == 1 and not Path(name).exists() else None
    return Source(model, base, meta.get("license"), _as_list(meta.get("language")))


def _as_list(v) -> list[str]:
    return [v] if isinstance(v, str) else list(v or [])


def _card_metadata(path: Path) -> dict:
    if not path.is_file():
        return {}
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(path).data.to_dict()
    except Exception as exc:  # a hand-written card with bad YAML: carry nothing from it
        log.warning("could not read the metadata of %s (%s)", path, exc)
        return {}


def write_card(folder: Path) -> Path:
    """Render ``folder``'s card into ``folder/README.md`` (atomically); returns its path."""
    path = Path(folder) / CARD
    text = render_card(path.parent)
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return path


def card_file(out: Path):
    """An output folder's extra file (``files={CARD: card_file(out)}``, given last): writes the card
    of the folder being written (under a temporary name), from the records and weights already in
    it, naming the folder ``out``."""
    return lambda path: path.write_text(render_card(path.parent, name=Path(out).name))


def render_card(folder: Path, *, name: str | None = None) -> str:
    """The card of ``folder`` (called ``name`` in its text and commands, default its own name)."""
    from huggingface_hub import ModelCard

    records = read_records(folder)
    first = next(iter(records.values()), {})
    source = source_of(str(first.get("model", ""))) if first else Source("")
    evals = json.loads((folder / EVALS).read_text()) if (folder / EVALS).is_file() else []
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    qc = config.get("quantization_config")
    checks = json.loads((folder / CHECKS).read_text()) if (folder / CHECKS).is_file() else None
    release = json.loads((folder / RELEASE).read_text()) if (folder / RELEASE).is_file() else {}
    ladder = folder / GGUF_DIR / "ladder.json"
    if ladder.is_file():
        release["ladder"] = json.loads(ladder.read_text())
    name = name or release.get("name") or folder.name
    data = metadata(name, records, source, evals, qc)
    if release.get("ladder"):
        data.tags = [*data.tags, "gguf"]
    text = f"---\n{data.to_yaml()}\n---\n\n{body(folder, name, records, source, evals, config, checks, release)}"
    ModelCard(text)  # parsed back as the hub parses it: raises on metadata it could not read
    return text


def record_check(folder: Path, report: dict) -> Path | None:
    """Keep ``llmshrink check``'s result in a folder llmshrink wrote (``llmshrink_check.json``) and
    write its card again, with the usage of each consumer that ran it; returns the card, or None.
    Consumers live in different environments (GPTQModel's, vLLM's), so a consumer this run could
    not try keeps the result an earlier run in another environment got."""
    folder = Path(folder)
    if not (folder.is_dir() and read_records(folder)):
        return None
    before = json.loads((folder / CHECKS).read_text()) if (folder / CHECKS).is_file() else {}
    tried = {r["consumer"]: r for r in before.get("results", []) if r.get("status") in ("ok", "failed")}
    now = {r["consumer"] for r in report["results"]}
    results = [r if r.get("status") in ("ok", "failed") else tried.get(r["consumer"], r) for r in report["results"]]
    results += [r for name, r in tried.items() if name not in now]
    return _keep(folder, CHECKS, {**report, "results": results})


def _keep(folder: Path, name: str, data) -> Path | None:
    try:
        with atomic_file(folder / name) as tmp:
            tmp.write_text(json.dumps(data, indent=2) + "\n")
        return write_card(folder)
    except (OSError, UserError) as exc:  # a read-only or full folder: the result was printed, keep going
        log.warning("could not keep the result in %s (%s)", folder, exc)
        return None


def record_eval(folder: Path, rec: dict) -> Path | None:
    """Keep a perplexity ``rec`` (``evaluate_perplexity``'s) in the folder's ``llmshrink_evals.json``
    (one entry per data, tokens, window length and stride: a newer score replaces the older) and
    write the card again. Only for folders llmshrink wrote; returns the card, or None."""
    folder = Path(folder)
    if "perplexity" not in rec or not read_records(folder):
        return None
    keys = ("data", "tokens", "seqlen", "stride")
    path = folder / EVALS
    kept = json.loads(path.read_text()) if path.is_file() else []
    entry = {k: rec.get(k) for k in (*keys, "perplexity", "kl", "reference_perplexity", "backend")}
    kept = [e for e in kept if any(e.get(k) != entry[k] for k in keys)] + [entry]
    return _keep(folder, EVALS, kept)
