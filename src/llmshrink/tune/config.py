"""Settings of tail fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..config import Config, FieldError, save_dtype_field
from ..data.instruct import FORMATS
from ..data.templates import TEMPLATES, get_template

FRONTS = ("auto", "cache", "stream")
AMPS = ("off", "on", "auto")

# The recipe's and the demo's distillation text: three genres (plays, speeches, a novel), none
# of them the out-of-domain corpus it is scored on (brown:eval).
DISTILL_DATA = "shakespeare:calib:0.1,sotu:calib:0.45,moby:calib:0.45"

FINETUNE_METHODS = ("full", "lora")
FINETUNE_LOSSES = ("task", "kd", "task+kd")


def parse_train(spec: str) -> int:
    """``last:N`` -> N (the number of trailing decoder blocks to train)."""
    head, _, n = str(spec).partition(":")
    if head != "last" or not n.isdigit() or int(n) < 1:
        raise FieldError("train", f"bad train spec {spec!r}: write last:N, e.g. last:4 for the last four blocks")
    return int(n)


@dataclass
class FinetuneConfig(Config):
    """Tail fine-tuning: train the last blocks (and lm_head) with everything before them frozen."""

    kind: ClassVar[str] = "finetune"
    train: str = field(default="last:4", metadata={"help": "last:N trains the last N decoder blocks"})
    lm_head: bool = field(default=False, metadata={"help": "train lm_head too (untied from the embedding)"})
    method: str = field(default="full", metadata={"help": "full: every weight of the tail; lora: LoRA adapters, "
                                                          "merged at the end", "choices": FINETUNE_METHODS})
    data: str = field(default="shakespeare:calib", metadata={
        "help": "corpus (name[:split], .txt, .jsonl, folder), a weighted mix of them (CORPUS:WEIGHT,CORPUS:WEIGHT,"
                "...: --nsamples windows shared out by weight) or instruction JSONL"})
    format: str = field(default="text", metadata={"help": "text (language-model loss) or an instruction format "
                                                          "(response-only loss)", "choices": FORMATS})
    template: str = field(default="chat", metadata={"help": "prompt template for instruction data",
                                                    "choices": tuple(TEMPLATES)})
    skip_bad_lines: bool = field(default=False, metadata={"help": "skip malformed JSONL lines (warn) instead of "
                                                                   "stopping"})
    loss: str | None = field(default=None, metadata={"help": "task, kd or task+kd; default kd with a teacher, "
                                                             "else task", "choices": FINETUNE_LOSSES})
    distill_from: str | None = field(default=None, metadata={"help": "original model: loss = KL from its "
                                                                     "next-token distribution"})
    generated: int = field(default=0, metadata={
        "help": "with --distill-from: windows of text sampled from the original model itself (from a random "
                "first token) added to the training windows, distillation loss only: the tail learns to match the "
                "original beyond the corpus' genre"})
    tune_scales: bool = field(default=False, metadata={
        "help": "with --distill-from: also train the quantized blocks' GPTQ scales (codes and zeros fixed) and the "
                "front's norms and biases, end to end through the whole model (EfficientQAT's E2E-QP): the front's "
                "error shrinks on any text, and the checkpoint stays plain GPTQ; each step then runs every block"})
    scale_lr: float = field(default=3e-3, metadata={"help": "learning rate of the GPTQ scales (--tune-scales), "
                                                            "relative: each scale trains as a factor starting at 1"})
    epochs: float | None = field(default=None, metadata={"help": "passes over the data (default 1 unless steps)"})
    steps: int | None = field(default=None, metadata={"help": "optimizer steps (instead of epochs)"})
    lr: float = field(default=1e-4, metadata={"help": "learning rate"})
    head_lr: float | None = field(default=None, metadata={"help": "learning rate of lm_head (with --lm-head); "
                                                                   "default: --lr"})
    hidden_loss: float = field(default=0.0, metadata={"help": "with --distill-from: weight of a loss matching the "
                                                              "teacher's final normed hidden states (mean square "
                                                              "error over the teacher's mean square), added to the KL"})
    amp: str = field(default="off", metadata={
        "help": "bfloat16 autocast: the matrix products of the training steps, and of the passes caching what "
                "they read (the front's and the original's outputs), run in bfloat16 while the weights, the "
                "optimizer and the loss stay float32 (1.6x faster steps on a CPU with AVX512-BF16); auto: on where "
                "bfloat16 is native (GPUs; CPUs with AVX512-BF16, AMX or Arm BF16), off elsewhere; scoring stays in "
                "the model's dtype", "choices": AMPS})
    batch_size: int = field(default=4, metadata={"help": "windows (or examples) per micro-batch"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    seqlen: int = field(default=512, metadata={"help": "tokens per text window / longest instruction example"})
    loss_tokens: float = field(default=1.0, metadata={"help": "fraction of each window's positions the loss is "
                                                              "taken on, drawn afresh each step (the tail still "
                                                              "reads every token); below 1 makes steps cheaper"})
    nsamples: int | None = field(default=None, metadata={"help": "text windows per epoch; default: as many as the "
                                                                 "steps use, or the whole corpus"})
    rank: int = field(default=16, metadata={"help": "LoRA rank (--method lora)"})
    alpha: float = field(default=32.0, metadata={"help": "LoRA alpha"})
    eval_data: str | None = field(default=None, metadata={"help": "held-out corpus for the final perplexity; "
                                                                  "default: the corpus' eval split, if it has one; "
                                                                  "none: no evaluation"})
    ood_data: str | None = field(default="brown:eval", metadata={
        "help": "an out-of-domain corpus scored before and after training beside the held-out one (with the KL "
                "divergence from --distill-from): whether the recovery carries to other text; none: skip"})
    eval_tokens: int | None = field(default=16384, metadata={"help": "score only the first N tokens of each "
                                                                     "evaluation corpus; 0: all of them"})
    eval_before: bool = field(default=True, metadata={"help": "score the model before training too (the "
                                                              "before/after table)"})
    eval_fraction: float = field(default=0.1, metadata={"help": "instruction examples held out and scored before "
                                                                "and after"})
    front: str = field(default="auto", metadata={
        "help": "the frozen front's outputs per training batch (and the teacher's): cache them once, or stream "
                "(compute them per batch: for data whose cache would not fit in memory); auto streams when the "
                "cache would take more than half the free memory", "choices": FRONTS})
    save_every: int = field(default=50, metadata={"help": "checkpoint every N optimizer steps"})
    seed: int = field(default=0, metadata={"help": "seed of the data order and LoRA init"})
    save_dtype: str = save_dtype_field()

    def __post_init__(self) -> None:
        parse_train(self.train)
        self.one_of("format", FORMATS, "data format")
        self.one_of("method", FINETUNE_METHODS, "method")
        self.one_of("front", FRONTS, "front")
        self.one_of("amp", AMPS, "amp")
        if self.loss is None:
            self.loss = "kd" if self.distill_from else "task"
        self.one_of("loss", FINETUNE_LOSSES, "loss")
        self.check(self.loss == "task" or bool(self.distill_from), "loss",
                   f"{self.loss!r} distils from the original model: give --distill-from MODEL")
        self.check(self.epochs is None or self.steps is None, ("epochs", "steps"), "give one, not both")
        self.check(self.epochs is None or self.epochs > 0, "epochs", f"must be > 0, got {self.epochs!r}")
        self.positive("batch_size", "grad_accum", "seqlen", "rank", "save_every")
        self.positive("steps", "nsamples", allow_none=True)
        self.check(self.eval_tokens is None or (isinstance(self.eval_tokens, int) and self.eval_tokens >= 0),
                   "eval_tokens",
                   f"must be >= 0, got {self.eval_tokens!r}")
        self.check(self.seqlen >= 2, "seqlen", "must be at least 2 tokens")
        self.check(self.lr > 0, "lr", f"must be > 0, got {self.lr!r}")
        self.check(self.alpha > 0, "alpha", f"must be > 0, got {self.alpha!r}")
        self.check(self.head_lr is None or self.head_lr > 0, "head_lr", f"must be > 0, got {self.head_lr!r}")
        self.check(isinstance(self.generated, int) and self.generated >= 0, "generated",
                   f"must be a whole number >= 0, got {self.generated!r}")
        self.check(self.generated == 0 or self.loss != "task", "generated",
                   "is distillation data: give --distill-from MODEL")
        self.check(self.generated == 0 or self.format == "text", "generated",
                   "adds text windows: use it with --format text")
        self.check(not self.tune_scales or self.loss != "task", "tune_scales",
                   "distils the quantized front towards the original: give --distill-from MODEL")
        self.check(self.scale_lr > 0, "scale_lr", f"must be > 0, got {self.scale_lr!r}")
        self.check(self.hidden_loss >= 0, "hidden_loss", f"must be >= 0, got {self.hidden_loss!r}")
        self.check(self.hidden_loss == 0 or self.loss != "task", "hidden_loss",
                   "matches the teacher's hidden states: give --distill-from MODEL")
        self.check(0 < self.loss_tokens <= 1, "loss_tokens", f"must be in (0, 1], got {self.loss_tokens!r}")
        self.check(0 <= self.eval_fraction < 1, "eval_fraction", f"must be in [0, 1), got {self.eval_fraction!r}")
        get_template(self.template)

    @property
    def n_train(self) -> int:
        return parse_train(self.train)
