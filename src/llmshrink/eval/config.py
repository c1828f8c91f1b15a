"""Settings of the evaluators: perplexity and speed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..config import Config

BACKENDS = ("auto", "transformers", "llama.cpp")


def eval_backend(model, backend: str = "auto") -> str:
    """The runtime that scores ``model``: ``auto`` picks llama.cpp for a ``.gguf`` file (its
    tokenizer, its logits) and transformers for anything else (a folder, an alias, a loaded model)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend
    if not isinstance(model, str | Path):
        return "transformers"
    path = Path(model)
    return "llama.cpp" if path.suffix.lower() == ".gguf" and path.is_file() else "transformers"


@dataclass
class EvalConfig(Config):
    """Perplexity evaluation."""

    kind: ClassVar[str] = "eval"
    data: str = field(default="shakespeare:eval", metadata={
        "help": "corpus: name[:split], .txt, folder, .jsonl or hf:NAME (perplexity, and the text the built-in "
                "tasks are made from)"})
    seqlen: int = field(default=512, metadata={"help": "tokens per window"})
    stride: int | None = field(default=None, metadata={"help": "sliding windows with this step (default: "
                                                               "non-overlapping)"})
    max_tokens: int | None = field(default=None, metadata={"help": "evaluate only the first N tokens"})
    batch_size: int = field(default=4, metadata={"help": "windows per forward pass"})

    def __post_init__(self) -> None:
        self.positive("seqlen")
        self.check(self.seqlen >= 2, "seqlen", "must be at least 2 tokens: a window needs a context and a target")
        self.positive("stride", "max_tokens", allow_none=True)
        self.check(self.stride is None or self.stride <= self.seqlen, "stride",
                   f"{self.stride} is larger than seqlen {self.seqlen}: tokens would be skipped")
        self.positive("batch_size")


@dataclass
class BenchConfig(Config):
    """Decode latency and memory."""

    kind: ClassVar[str] = "bench"
    prompt_tokens: int = field(default=128, metadata={"help": "tokens of the random prompt (prefill)"})
    new_tokens: int = field(default=64, metadata={"help": "tokens decoded greedily with the KV cache"})
    batch_size: int = field(default=1, metadata={"help": "sequences decoded at once"})
    repeats: int = field(default=5, metadata={"help": "timed runs after the warm-up (median)"})

    def __post_init__(self) -> None:
        self.positive("prompt_tokens", "new_tokens", "batch_size", "repeats")
