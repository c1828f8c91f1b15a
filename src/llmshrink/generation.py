"""Generate an answer to one instruction, through a prompt template."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .config import Config
from .data.templates import TEMPLATES, ChatTemplate, Example, get_template
from .errors import UserError
from .models.health import nonfinite_activations_error


@dataclass
class GenerateConfig(Config):
    """Text generation from one instruction."""

    kind: ClassVar[str] = "generate"
    template: str = field(default="chat", metadata={"help": "prompt template", "choices": tuple(TEMPLATES)})
    max_new_tokens: int = field(default=128, metadata={"help": "tokens to generate at most"})
    do_sample: bool = field(default=False, metadata={"help": "sample instead of greedy decoding", "flag": "sample"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature"})
    top_p: float = field(default=0.9, metadata={"help": "nucleus sampling mass"})
    top_k: int = field(default=50, metadata={"help": "sample among the k likeliest tokens (0: all)"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})

    def __post_init__(self) -> None:
        self.positive("max_new_tokens")
        self.check(self.temperature > 0, "temperature",
                   f"must be > 0, got {self.temperature}; use greedy decoding instead of 0")
        self.check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        self.check(self.top_k >= 0, "top_k", f"must be >= 0 (0 disables it), got {self.top_k}")
        get_template(self.template)  # unknown names fail here, before a model is loaded


@dataclass
class Generation:
    prompt: str  # the rendered prompt the model saw
    text: str  # the new text only
    new_tokens: int
    seconds: float


def check_instruction(instruction: str) -> None:
    if not instruction or not instruction.strip():
        raise UserError('the instruction is empty: give the text to answer, e.g. llmshrink generate MODEL "Write a haiku"')


@torch.inference_mode()
def generate(model: torch.nn.Module, tokenizer, instruction: str, cfg: GenerateConfig | None = None,
             *, input: str = "", context: str = "") -> Generation:
    cfg = cfg or GenerateConfig()
    check_instruction(instruction)
    template = get_template(cfg.template)
    prompt = template.prompt(Example(instruction, input, context), tokenizer)
    # A chat template writes its own special tokens; other prompts get the tokenizer's defaults.
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=not isinstance(template, ChatTemplate))
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    kwargs = dict(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
                  pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    if cfg.do_sample:
        torch.manual_seed(cfg.seed)
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
    else:  # greedy: clear sampling defaults a model's generation_config may carry
        kwargs.update(temperature=None, top_p=None, top_k=None)
    t0 = time.perf_counter()
    out = model.generate(**enc, **kwargs, output_scores=True, return_dict_in_generate=True)
    seconds = time.perf_counter() - t0
    if any(not torch.isfinite(s).any() for s in out.scores[:1]):  # first step: every logit NaN/inf
        raise nonfinite_activations_error(model, enc["input_ids"], "generating")
    out = out.sequences
    new = out[0, enc["input_ids"].shape[1]:]
    return Generation(prompt, tokenizer.decode(new, skip_special_tokens=True).strip(), int(new.numel()), seconds)
