"""Architectures as data.

Every LLaMA-family decoder in transformers has the same shape: an embedding, a list of decoder
blocks, a final norm and an lm_head. An :class:`ArchSpec` says where those live and which linear
layers of a block run in sequence (GPTQ's "true sequential" order), so that the block-wise driver,
the pruner and the exporters never hard-code module names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError

LLAMA_SEQUENTIAL: tuple[tuple[str, ...], ...] = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)


@dataclass(frozen=True)
class ArchSpec:
    """Where the parts of a decoder-only model live, as dotted module paths."""

    name: str
    layers: str = "model.layers"
    embed: str = "model.embed_tokens"
    norm: str = "model.norm"
    lm_head: str = "lm_head"
    rotary: str = "model.rotary_emb"
    # Linear layers in the order a block runs them; the layers of one group read the same input
    # (q/k/v the normed hidden states, gate/up the normed residual), so they share one Hessian.
    sequential: tuple[tuple[str, ...], ...] = LLAMA_SEQUENTIAL
    # The block's residual branches, in order: ``h = h + part(norm(h))`` for each (part, norm).
    # Once a part's linears are all quantized, the quantization driver carries the residual
    # stream past it (the input of the next part's norm) instead of running it again for later
    # groups (attention, above all).
    parts: tuple[str, ...] = ("self_attn", "mlp")
    part_norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")

    @property
    def linear_names(self) -> tuple[str, ...]:
        return tuple(name for group in self.sequential for name in group)

    def part_linears(self, part: str) -> tuple[str, ...]:
        return tuple(n for n in self.linear_names if n.startswith(part + "."))

    def blocks(self, model: torch.nn.Module) -> torch.nn.ModuleList:
        return model.get_submodule(self.layers)  # type: ignore[return-value]

    def block_linears(self, block: torch.nn.Module) -> dict[str, torch.nn.Linear]:
        return {name: block.get_submodule(name) for name in self.linear_names}  # type: ignore[misc]


# model_type (config.json) -> spec. Adding a LLaMA-shaped architecture is one line here.
ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama"),
    "mistral": ArchSpec("mistral"),
    "qwen2": ArchSpec("qwen2"),
    "qwen3": ArchSpec("qwen3"),
}


def arch_for(model_type: str | None) -> ArchSpec:
    spec = ARCHITECTURES.get(model_type or "")
    if spec is None:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise UserError(
            f"unsupported architecture {model_type!r}: llmshrink handles LLaMA-family decoders "
            f"({supported}); use a model of one of these types"
        )
    return spec


def arch_of(model: torch.nn.Module) -> ArchSpec:
    return arch_for(getattr(getattr(model, "config", None), "model_type", None))
