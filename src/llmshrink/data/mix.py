"""Weighted mixes of corpora for calibration: ``a.txt:0.5,shakespeare:calib:0.5``.

A mix is comma-separated CORPUS arguments, each optionally followed by ``:WEIGHT`` (a positive
number; 1 when left out). ``n`` windows are shared out in proportion to the weights (largest
remainders, ties to the earlier part), each part's windows sampled from its own corpus with the
same seed, and the whole set shuffled by that seed so that every batch holds a bit of each.
A single CORPUS without a weight is not a mix: it gives exactly the windows it always gave.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .corpora import check_corpus


@dataclass(frozen=True)
class Part:
    data: str
    weight: float


def _weight(text: str) -> float | None:
    try:
        w = float(text)
    except ValueError:
        return None
    return w if math.isfinite(w) else None


def parse_mix(spec: str) -> list[Part]:
    """The parts of a mix (one part of weight 1 for a plain CORPUS); a clear error for bad weights."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError("the corpus is empty: give a corpus name, a .txt/.jsonl file, a folder or hf:NAME")
    if Path(spec).expanduser().exists():  # a file or folder whose name has a comma or a colon
        return [Part(spec, 1.0)]
    parts = []
    for item in spec.split(","):
        item = item.strip()
        head, sep, tail = item.rpartition(":")
        weight = _weight(tail) if sep and head else None
        data = head if weight is not None else item
        if not data:
            raise UserError(f"empty part in the mix {spec!r}: write CORPUS[:WEIGHT],CORPUS[:WEIGHT],...")
        if weight is not None and weight <= 0:
            raise UserError(f"weight {tail} of {data} in {spec!r} must be > 0: give a positive weight or drop the part")
        parts.append(Part(data, 1.0 if weight is None else weight))
    seen = [p.data for p in parts]
    if len(set(seen)) != len(seen):
        raise UserError(f"a corpus appears twice in the mix {spec!r}: give each once, with one weight")
    return parts


def check_data(spec: str) -> None:
    """``check_corpus`` for each part of a mix (or the one corpus), before any model loads."""
    for part in parse_mix(spec):
        check_corpus(part.data)


def share(n: int, parts: list[Part]) -> list[int]:
    """``n`` windows shared out in proportion to the weights: largest remainders, ties to the
    earlier part; the counts add up to ``n``."""
    total = sum(p.weight for p in parts)
    exact = [n * p.weight / total for p in parts]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(parts)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts
