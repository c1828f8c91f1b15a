"""Tokenised windows over a corpus, for evaluation and calibration.

A corpus is tokenised once into one stream (documents joined by a blank line). Evaluation takes
consecutive windows over that stream; calibration samples ``n`` random windows with a seed.
When the tokenizer puts a BOS token in front of its inputs by default, every window starts with
BOS, followed by ``seqlen - 1`` tokens of text; otherwise a window is ``seqlen`` tokens of text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from .corpora import Corpus

SEPARATOR = "\n\n"


def bos_id(tokenizer) -> int | None:
    """The BOS id if this tokenizer prepends it by default, else None."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos if ids and ids[0] == bos else None


def tokenize_corpus(corpus: Corpus, tokenizer, *, max_tokens: int | None = None,
                    docs_per_batch: int = 8) -> torch.Tensor:
    """One 1-D stream of token ids (no special tokens) for the whole corpus.

    Documents are tokenized a few at a time and kept as int64 tensors, not Python lists, so a
    large corpus costs 8 bytes a token; with ``max_tokens`` tokenizing stops once enough is read."""
    sep = torch.tensor(tokenizer(SEPARATOR, add_special_tokens=False)["input_ids"], dtype=torch.long)
    docs = corpus.documents
    parts: list[torch.Tensor] = []
    total = 0
    for start in range(0, len(docs), docs_per_batch):
        texts = [d.text for d in docs[start: start + docs_per_batch]]
        for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]:
            if parts:
                parts.append(sep)
                total += len(sep)
            parts.append(torch.tensor(ids, dtype=torch.long))
            total += len(ids)
        if max_tokens is not None and total >= max_tokens:
            break
    stream = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
    return stream[:max_tokens] if max_tokens is not None else stream


@dataclass(frozen=True)
class Window:
    """Tokens ``[begin, end)`` of the stream; targets at stream positions ``>= score_from`` count."""

    begin: int
    end: int
    score_from: int


def eval_windows(n_tokens: int, seqlen: int, *, stride: int | None = None, bos: bool = False,
                 name: str = "the corpus") -> list[Window]:
    """Full-length windows over ``n_tokens``; each scored token is scored exactly once.

    Non-overlapping (``stride`` = window length) by default. With a smaller stride each window
    scores only the tokens after the previous window's end, so that every scored token sees at
    least ``length - stride`` tokens of context (the Hugging Face sliding-window recipe). Without
    BOS a window's first token has no context and is never a target.
    """
    length = seqlen - 1 if bos else seqlen
    if length < 1 or n_tokens < length or (not bos and n_tokens < 2):
        raise UserError(
            f"{name} has {n_tokens} tokens, fewer than one window of {length}: give more text or a smaller --seqlen"
        )
    step = length if stride is None else min(stride, length)
    windows: list[Window] = []
    scored_until = 0 if bos else 1  # stream position of the first token not yet scored
    for begin in range(0, n_tokens - length + 1, step):
        end = begin + length
        first = max(scored_until, begin if bos else begin + 1)
        windows.append(Window(begin, end, first))
        scored_until = end
    return windows


def sample_windows(stream: torch.Tensor, n: int, seqlen: int, *, seed: int = 0, bos: int | None = None,
                   name: str = "the corpus") -> torch.Tensor:
    """``n`` calibration windows of ``seqlen`` tokens at random offsets; same seed, same windows."""
    if n < 1:
        raise UserError(f"the number of calibration samples must be >= 1, got {n}")
    length = seqlen - 1 if bos is not None else seqlen
    if stream.numel() < length or length < 1:
        raise UserError(
            f"{name} has {stream.numel()} tokens, fewer than one window of {seqlen}: give more text or a smaller --seqlen"
        )
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - length + 1, (n,), generator=gen)
    rows = torch.stack([stream[s: s + length] for s in starts.tolist()])
    if bos is not None:
        rows = torch.cat([torch.full((n, 1), bos, dtype=rows.dtype), rows], dim=1)
    return rows
