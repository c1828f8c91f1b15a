"""Settings of depth pruning: scoring and removal, and healing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..config import Config, save_dtype_field
from ..errors import UserError

PRUNE_CRITERIA = ("ppl", "taylor", "magnitude", "angular")
HEAL_METHODS = ("none", "lora")
HEAL_LOSSES = ("lm", "kd", "lm+kd")


@dataclass
class PruneConfig(Config):
    """Depth pruning: which blocks to score on what data, and how many to remove."""

    kind: ClassVar[str] = "prune"
    criterion: str = field(default="ppl", metadata={"help": "block importance: perplexity without the block, "
                                                            "Taylor+, weight magnitude or angular distance",
                                                    "choices": PRUNE_CRITERIA})
    remove: int | None = field(default=None, metadata={"help": "number of blocks to remove"})
    ratio: float | None = field(default=None, metadata={"help": "fraction of blocks to remove, in (0, 1)"})
    keep_first: int = field(default=1, metadata={"help": "never remove the first N blocks"})
    keep_last: int = field(default=1, metadata={"help": "never remove the last N blocks"})
    iterative: bool = field(default=False, metadata={"help": "re-score after each removal"})
    data: str = field(default="shakespeare:calib", metadata={"help": "scoring corpus"})
    nsamples: int = field(default=16, metadata={"help": "scoring windows"})
    seqlen: int = field(default=256, metadata={"help": "tokens per scoring window"})
    seed: int = field(default=0, metadata={"help": "seed of the scoring windows"})
    batch_size: int = field(default=4, metadata={"help": "scoring windows per forward pass"})
    save_dtype: str = save_dtype_field()

    def __post_init__(self) -> None:
        self.one_of("criterion", PRUNE_CRITERIA, "criterion")
        self.check(self.remove is None or self.ratio is None, ("remove", "ratio"),
                   "give one: a number of blocks or a fraction, not both")
        self.positive("remove", allow_none=True)
        self.check(self.ratio is None or 0 < self.ratio < 1, "ratio", f"must be in (0, 1), got {self.ratio!r}")
        for name in ("keep_first", "keep_last"):
            value = getattr(self, name)
            self.check(isinstance(value, int) and value >= 0, name, f"must be a whole number >= 0, got {value!r}")
        self.positive("nsamples", "seqlen", "batch_size")
        self.check(self.seqlen >= 2, "seqlen", "must be at least 2 tokens: a window needs a context and a target")

    def n_remove(self, n_blocks: int) -> int:
        """Blocks to remove from a model of ``n_blocks``, checked against what may be removed."""
        if self.remove is None and self.ratio is None:
            raise UserError("say how many blocks to remove: --remove N or --ratio R (or use --score-only)")
        n = self.remove if self.remove is not None else round(self.ratio * n_blocks)
        if n >= n_blocks:
            raise UserError(f"cannot remove {n} of the model's {n_blocks} blocks: at least one must stay")
        if n < 1:
            raise UserError(f"ratio {self.ratio} of {n_blocks} blocks rounds to 0 blocks: give a larger ratio")
        removable = n_blocks - self.keep_first - self.keep_last
        if n > removable:
            raise UserError(f"cannot remove {n} blocks: with keep_first={self.keep_first} and "
                            f"keep_last={self.keep_last} only {max(removable, 0)} of {n_blocks} may go")
        return n


@dataclass
class HealConfig(Config):
    """Healing a pruned model with LoRA: a short language-model (or distillation) fine-tune, merged."""

    kind: ClassVar[str] = "heal"
    method: str = field(default="none", metadata={"help": "heal the pruned model", "choices": HEAL_METHODS,
                                                  "flag": "heal"})
    steps: int = field(default=200, metadata={"help": "healing optimizer steps"})
    data: str = field(default="shakespeare:calib", metadata={"help": "healing corpus"})
    seqlen: int = field(default=256, metadata={"help": "tokens per healing window"})
    batch_size: int = field(default=4, metadata={"help": "healing windows per step"})
    rank: int = field(default=8, metadata={"help": "LoRA rank", "flag": "lora_rank"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (scale = alpha / rank)", "flag": "lora_alpha"})
    lr: float = field(default=5e-4, metadata={"help": "healing learning rate"})
    loss: str = field(default="lm", metadata={"help": "lm: next-token loss; kd: distil from the unpruned model; "
                                                      "lm+kd: both", "choices": HEAL_LOSSES})
    seed: int = field(default=0, metadata={"help": "seed of the healing windows and LoRA init"})

    def __post_init__(self) -> None:
        self.one_of("method", HEAL_METHODS, "healing method")
        self.one_of("loss", HEAL_LOSSES, "healing loss")
        self.positive("steps", "seqlen", "batch_size", "rank")
        self.check(self.lr > 0, "lr", f"must be > 0, got {self.lr!r}")
        self.check(self.alpha > 0, "alpha", f"must be > 0, got {self.alpha!r}")
