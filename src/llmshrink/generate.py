"""Generate an answer to one instruction, through a prompt template."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .config import GenerateConfig
from .data.templates import ChatTemplate, Example, get_template


@dataclass
class Generation:
    prompt: str  # the rendered prompt the model saw
    text: str  # the new text only
    new_tokens: int
    seconds: float


@torch.inference_mode()
def generate(model: torch.nn.Module, tokenizer, instruction: str, cfg: GenerateConfig | None = None,
             *, input: str = "", context: str = "") -> Generation:
    cfg = cfg or GenerateConfig()
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
    out = model.generate(**enc, **kwargs)
    seconds = time.perf_counter() - t0
    new = out[0, enc["input_ids"].shape[1]:]
    return Generation(prompt, tokenizer.decode(new, skip_special_tokens=True).strip(), int(new.numel()), seconds)
