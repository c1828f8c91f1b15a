"""Calibration windows: the one path from a corpus name to seeded token windows."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..config import Config
from ..memory import release_freed
from .corpora import load_corpus
from .mix import parse_mix, share
from .windows import bos_id, sample_windows, tokenize_corpus

log = logging.getLogger(__name__)


@dataclass
class CalibConfig(Config):
    """Calibration data: which corpus, how many windows of how many tokens."""

    kind: ClassVar[str] = "calibration"
    data: str = field(default="shakespeare:calib", metadata={
        "help": "calibration corpus: name[:split], .txt, folder, .jsonl or hf:NAME; or a weighted mix "
                "CORPUS:WEIGHT,CORPUS:WEIGHT,... (windows shared out by weight)", "flag": "calib"})
    nsamples: int = field(default=128, metadata={"help": "calibration windows"})
    seqlen: int = field(default=512, metadata={"help": "tokens per calibration window"})
    seed: int = field(default=0, metadata={"help": "seed of the windows' offsets"})
    batch_size: int = field(default=8, metadata={"help": "calibration windows per forward pass"})

    def __post_init__(self) -> None:
        self.positive("nsamples", "seqlen", "batch_size")


def corpus_windows(data: str, tokenizer, n: int, seqlen: int, *, seed: int = 0, role: str = "calibration",
                   max_tokens: int | None = None) -> torch.Tensor:
    """``n`` seeded windows of ``seqlen`` tokens of corpus ``data`` (BOS first where the tokenizer adds
    it); for a weighted mix (``llmshrink.data.mix``), each part's share of them, shuffled together."""
    parts = parse_mix(data)
    if len(parts) == 1:
        return _windows(parts[0].data, tokenizer, n, seqlen, seed, role, max_tokens)
    counts = share(n, parts)
    log.info("%s mix: %s", role, ", ".join(f"{c} windows of {p.data}" for p, c in zip(parts, counts, strict=True)))
    rows = torch.cat([_windows(p.data, tokenizer, c, seqlen, seed, role, max_tokens)
                      for p, c in zip(parts, counts, strict=True) if c])
    return rows[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]


def _windows(data: str, tokenizer, n: int, seqlen: int, seed: int, role: str, max_tokens: int | None):
    stream = tokenize_corpus(load_corpus(data), tokenizer, max_tokens=max_tokens)
    windows = sample_windows(stream, n, seqlen, seed=seed, bos=bos_id(tokenizer), name=f"{role} corpus {data}")
    del stream
    release_freed()  # the tokenizer's transient memory, before the pass that reads the windows
    return windows


def calibration_windows(tokenizer, calib: CalibConfig) -> torch.Tensor:
    windows = corpus_windows(calib.data, tokenizer, calib.nsamples, calib.seqlen, seed=calib.seed)
    log.info("calibrating on %d x %d tokens of %s", *windows.shape, calib.data)
    return windows
