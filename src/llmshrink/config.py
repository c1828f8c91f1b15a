"""Typed, validated configurations.

Each job's settings are a dataclass validated in ``__post_init__``; the CLI and (later) YAML
recipes build them with :meth:`Config.from_dict`, which rejects unknown fields by name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from .errors import UserError


@dataclass
class Config:
    kind: ClassVar[str] = "config"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "") -> Self:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            prefix = f"{where}." if where else ""
            raise UserError(
                f"unknown field {prefix}{unknown[0]} in {cls.kind} settings: known fields are {', '.join(sorted(names))}"
            )
        return cls(**data)


def _positive(name: str, value: int | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{name} must be a positive whole number, got {value!r}")


@dataclass
class EvalConfig(Config):
    """Perplexity evaluation."""

    kind: ClassVar[str] = "eval"
    data: str = field(default="shakespeare:eval", metadata={"help": "corpus: name[:split], file, folder or hf:NAME"})
    seqlen: int = field(default=512, metadata={"help": "tokens per window"})
    stride: int | None = field(default=None, metadata={"help": "window step; default seqlen (non-overlapping)"})
    max_tokens: int | None = field(default=None, metadata={"help": "use only the first N tokens of the corpus"})
    batch_size: int = field(default=4, metadata={"help": "windows per forward pass"})

    def __post_init__(self) -> None:
        _positive("seqlen", self.seqlen)
        if self.seqlen < 2:
            raise UserError("seqlen must be at least 2 tokens: a window needs a context and a target")
        _positive("stride", self.stride, allow_none=True)
        if self.stride is not None and self.stride > self.seqlen:
            raise UserError(f"stride {self.stride} is larger than seqlen {self.seqlen}: tokens would be skipped")
        _positive("max_tokens", self.max_tokens, allow_none=True)
        _positive("batch_size", self.batch_size)


@dataclass
class GenerateConfig(Config):
    """Text generation from one instruction."""

    kind: ClassVar[str] = "generate"
    template: str = field(default="chat", metadata={"help": "prompt template name"})
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        _positive("max_new_tokens", self.max_new_tokens)
        if self.temperature <= 0:
            raise UserError(f"temperature must be > 0, got {self.temperature}; use greedy decoding instead of 0")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UserError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        from .data.templates import get_template

        get_template(self.template)  # unknown names fail here, before a model is loaded


QUANT_METHODS = ("gptq", "rtn")


@dataclass
class QuantConfig(Config):
    """Weight quantization: the grid, the GPTQ solve, and calibration."""

    kind: ClassVar[str] = "quantize"
    method: str = field(default="gptq", metadata={"help": "gptq or rtn"})
    bits: int = field(default=4, metadata={"help": "2, 3, 4 or 8"})
    group_size: int = field(default=128, metadata={"help": "columns per scale/zero group; -1 for one per row"})
    sym: bool = field(default=True, metadata={"help": "symmetric grid (zero point fixed mid-range)"})
    act_order: bool = field(default=True, metadata={"help": "quantize columns in order of decreasing Hessian diagonal"})
    static_groups: bool = field(default=False, metadata={"help": "fix group grids before the solve (with act_order)"})
    damp: float = field(default=0.01, metadata={"help": "damping as a fraction of the mean Hessian diagonal"})
    block_size: int = field(default=128, metadata={"help": "columns per lazy-update block"})
    mse: bool = field(default=True, metadata={"help": "search a shrunk range per group for the lowest "
                                                      "(Hessian-weighted, for GPTQ) error"})
    grid: str = field(default="zero", metadata={"help": "zero (HF GPTQ: scale and zero point), signed (GGUF "
                                                        "Q4_0/Q8_0) or min (GGUF Q4_1: scale and fp16 minimum)"})

    def __post_init__(self) -> None:
        if self.method not in QUANT_METHODS:
            raise UserError(f"unknown method {self.method!r}: use one of {', '.join(QUANT_METHODS)}")
        if self.bits not in (2, 3, 4, 8):
            raise UserError(f"bits must be 2, 3, 4 or 8, got {self.bits!r}")
        if not isinstance(self.group_size, int) or (self.group_size != -1 and self.group_size < 1):
            raise UserError(f"group size must be -1 (one group per row) or >= 1, got {self.group_size!r}")
        if not 0 < self.damp < 1:
            raise UserError(f"damp must be in (0, 1), got {self.damp!r}")
        _positive("block_size", self.block_size)
        from .quant.grid import GRID_KINDS

        if self.grid not in GRID_KINDS:
            raise UserError(f"unknown grid {self.grid!r}: use one of {', '.join(GRID_KINDS)}")
        if (self.grid == "signed" and not self.sym) or (self.grid == "min" and self.sym):
            raise UserError(f"a {self.grid} grid is {'symmetric' if self.grid == 'signed' else 'asymmetric'}: "
                            f"set sym={self.grid == 'signed'}")
        if self.grid != "zero" and self.act_order and not self.static_groups and self.group_size != -1:
            raise UserError(f"a {self.grid} grid stores one scale per block of consecutive columns: "
                            "act_order needs static_groups")

    @property
    def maxq(self) -> int:
        return (1 << self.bits) - 1


@dataclass
class GGUFConfig(Config):
    """GGUF export: the tensor type, and how quantized types are solved."""

    kind: ClassVar[str] = "export"
    type: str = field(default="q4_0", metadata={"help": "f16, bf16, q8_0, q4_0 or q4_1"})
    embed_type: str | None = field(default=None, metadata={"help": "type of token_embd/output; default q8_0 for "
                                                                   "quantized types, else the type itself"})
    method: str = field(default="gptq", metadata={"help": "gptq (solve on the GGML grid) or rtn"})
    act_order: bool = field(default=True, metadata={"help": "GPTQ in order of decreasing Hessian diagonal"})
    damp: float = 0.01
    mse: bool = field(default=True, metadata={"help": "search each block's scale for the lowest error"})

    def __post_init__(self) -> None:
        from .export.ggml import ggml_type

        ggml_type(self.type)
        if self.embed_type is not None:
            ggml_type(self.embed_type)
        if self.method not in QUANT_METHODS:
            raise UserError(f"unknown method {self.method!r}: use one of {', '.join(QUANT_METHODS)}")
        if not 0 < self.damp < 1:
            raise UserError(f"damp must be in (0, 1), got {self.damp!r}")

    def quant_config(self) -> QuantConfig | None:
        """The GPTQ/RTN settings that solve on this type's grid (None for float types)."""
        from .export.ggml import BLOCK, ggml_type

        t = ggml_type(self.type)
        if not t.quantized:
            return None
        return QuantConfig(method=self.method, bits=t.bits, group_size=BLOCK, sym=t.grid == "signed", grid=t.grid,
                           act_order=self.act_order, static_groups=self.act_order, damp=self.damp, mse=self.mse)


PRUNE_CRITERIA = ("ppl", "taylor", "magnitude", "angular")


@dataclass
class PruneConfig(Config):
    """Depth pruning: which blocks to score on what data, and how many to remove."""

    kind: ClassVar[str] = "prune"
    criterion: str = field(default="ppl", metadata={"help": "ppl, taylor, magnitude or angular"})
    remove: int | None = field(default=None, metadata={"help": "number of blocks to remove"})
    ratio: float | None = field(default=None, metadata={"help": "fraction of blocks to remove, in (0, 1)"})
    keep_first: int = field(default=1, metadata={"help": "never remove the first N blocks"})
    keep_last: int = field(default=1, metadata={"help": "never remove the last N blocks"})
    iterative: bool = field(default=False, metadata={"help": "re-score after each removal"})
    data: str = field(default="shakespeare:calib", metadata={"help": "scoring corpus"})
    nsamples: int = field(default=16, metadata={"help": "scoring windows"})
    seqlen: int = field(default=256, metadata={"help": "tokens per scoring window"})
    seed: int = 0
    batch_size: int = field(default=4, metadata={"help": "scoring windows per forward pass"})

    def __post_init__(self) -> None:
        if self.criterion not in PRUNE_CRITERIA:
            raise UserError(f"unknown criterion {self.criterion!r}: use one of {', '.join(PRUNE_CRITERIA)}")
        if self.remove is not None and self.ratio is not None:
            raise UserError("give either remove (a number of blocks) or ratio (a fraction), not both")
        _positive("remove", self.remove, allow_none=True)
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise UserError(f"ratio must be in (0, 1), got {self.ratio!r}")
        for name in ("keep_first", "keep_last"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise UserError(f"{name} must be a whole number >= 0, got {value!r}")
        for name in ("nsamples", "seqlen", "batch_size"):
            _positive(name, getattr(self, name))
        if self.seqlen < 2:
            raise UserError("seqlen must be at least 2 tokens: a window needs a context and a target")

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


HEAL_METHODS = ("none", "lora")
HEAL_LOSSES = ("lm", "kd", "lm+kd")


@dataclass
class HealConfig(Config):
    """Healing a pruned model with LoRA: a short language-model (or distillation) fine-tune, merged."""

    kind: ClassVar[str] = "heal"
    method: str = field(default="none", metadata={"help": "none or lora"})
    steps: int = field(default=200, metadata={"help": "optimizer steps"})
    data: str = field(default="shakespeare:calib", metadata={"help": "healing corpus"})
    seqlen: int = 256
    batch_size: int = 4
    rank: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (scale = alpha / rank)"})
    lr: float = 5e-4
    loss: str = field(default="lm", metadata={"help": "lm (next-token), kd (KL to the unpruned model) or lm+kd"})
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in HEAL_METHODS:
            raise UserError(f"unknown healing method {self.method!r}: use one of {', '.join(HEAL_METHODS)}")
        if self.loss not in HEAL_LOSSES:
            raise UserError(f"unknown healing loss {self.loss!r}: use one of {', '.join(HEAL_LOSSES)}")
        for name in ("steps", "seqlen", "batch_size", "rank"):
            _positive(name, getattr(self, name))
        if not self.lr > 0 or not self.alpha > 0:
            raise UserError("lr and alpha must be > 0")


FINETUNE_METHODS = ("full", "lora")
FINETUNE_LOSSES = ("task", "kd", "task+kd")


def parse_train(spec: str) -> int:
    """``last:N`` -> N (the number of trailing decoder blocks to train)."""
    head, _, n = str(spec).partition(":")
    if head != "last" or not n.isdigit() or int(n) < 1:
        raise UserError(f"bad train spec {spec!r}: write last:N, e.g. last:4 for the last four blocks")
    return int(n)


@dataclass
class FinetuneConfig(Config):
    """Tail fine-tuning: train the last blocks (and lm_head) with everything before them frozen."""

    kind: ClassVar[str] = "finetune"
    train: str = field(default="last:4", metadata={"help": "last:N trains the last N decoder blocks"})
    lm_head: bool = field(default=True, metadata={"help": "train lm_head too (untied from the embedding)"})
    method: str = field(default="full", metadata={"help": "full or lora"})
    data: str = field(default="shakespeare:calib", metadata={"help": "corpus, or a JSONL file of instructions"})
    format: str = field(default="text", metadata={"help": "text, alpaca, sharegpt or vicuna"})
    template: str = field(default="chat", metadata={"help": "prompt template for instruction data"})
    skip_bad_lines: bool = field(default=False, metadata={"help": "skip malformed JSONL lines (warn) instead of "
                                                                   "stopping"})
    loss: str | None = field(default=None, metadata={"help": "task, kd or task+kd; default kd with a teacher, "
                                                             "else task"})
    distill_from: str | None = field(default=None, metadata={"help": "original model to distil from"})
    epochs: float | None = field(default=None, metadata={"help": "passes over the data (default 1 unless steps)"})
    steps: int | None = field(default=None, metadata={"help": "optimizer steps (instead of epochs)"})
    lr: float = 1e-4
    head_lr: float | None = field(default=None, metadata={"help": "learning rate of lm_head (with --lm-head); "
                                                                   "default: --lr"})
    hidden_loss: float = field(default=0.0, metadata={"help": "with --distill-from: weight of a loss matching the "
                                                              "teacher's final normed hidden states (mean square "
                                                              "error over the teacher's mean square), added to the KL"})
    batch_size: int = 4
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    seqlen: int = field(default=512, metadata={"help": "tokens per text window / longest instruction example"})
    loss_tokens: float = field(default=1.0, metadata={"help": "fraction of each window's positions the loss is "
                                                              "taken on, drawn afresh each step (the tail still "
                                                              "reads every token); below 1 makes steps cheaper"})
    nsamples: int | None = field(default=None, metadata={"help": "text windows per epoch; default: the "
                                                                 "corpus cut into non-overlapping windows"})
    rank: int = field(default=16, metadata={"help": "LoRA rank"})
    alpha: float = field(default=32.0, metadata={"help": "LoRA alpha"})
    eval_data: str | None = field(default=None, metadata={"help": "held-out corpus for the final perplexity; "
                                                                  "default: the corpus' eval split, if it has one; none: no evaluation"})
    eval_fraction: float = field(default=0.1, metadata={"help": "instruction examples held out for the final "
                                                                "evaluation"})
    save_every: int = field(default=50, metadata={"help": "checkpoint every N optimizer steps"})
    seed: int = 0

    def __post_init__(self) -> None:
        parse_train(self.train)
        from .data.instruct import FORMATS

        if self.format not in FORMATS:
            raise UserError(f"unknown data format {self.format!r}: use one of {', '.join(FORMATS)}")
        if self.method not in FINETUNE_METHODS:
            raise UserError(f"unknown method {self.method!r}: use one of {', '.join(FINETUNE_METHODS)}")
        if self.loss is None:
            self.loss = "kd" if self.distill_from else "task"
        if self.loss not in FINETUNE_LOSSES:
            raise UserError(f"unknown loss {self.loss!r}: use one of {', '.join(FINETUNE_LOSSES)}")
        if self.loss != "task" and not self.distill_from:
            raise UserError(f"loss {self.loss!r} distils from the original model: give --distill-from MODEL")
        if self.epochs is not None and self.steps is not None:
            raise UserError("give either epochs or steps, not both")
        if self.epochs is not None and not self.epochs > 0:
            raise UserError(f"epochs must be > 0, got {self.epochs!r}")
        for name in ("batch_size", "grad_accum", "seqlen", "rank", "save_every"):
            _positive(name, getattr(self, name))
        _positive("steps", self.steps, allow_none=True)
        _positive("nsamples", self.nsamples, allow_none=True)
        if self.seqlen < 2:
            raise UserError("seqlen must be at least 2 tokens")
        if not self.lr > 0 or not self.alpha > 0:
            raise UserError("lr and alpha must be > 0")
        if self.head_lr is not None and not self.head_lr > 0:
            raise UserError(f"head_lr must be > 0, got {self.head_lr!r}")
        if not self.hidden_loss >= 0:
            raise UserError(f"hidden_loss must be >= 0, got {self.hidden_loss!r}")
        if self.hidden_loss > 0 and self.loss == "task":
            raise UserError("hidden_loss matches the teacher's hidden states: give --distill-from MODEL")
        if not 0 < self.loss_tokens <= 1:
            raise UserError(f"loss_tokens must be in (0, 1], got {self.loss_tokens!r}")
        if not 0 <= self.eval_fraction < 1:
            raise UserError(f"eval_fraction must be in [0, 1), got {self.eval_fraction!r}")
        from .data.templates import get_template

        get_template(self.template)

    @property
    def n_train(self) -> int:
        return parse_train(self.train)
