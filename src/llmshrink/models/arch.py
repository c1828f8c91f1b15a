"""Architectures as data.

Every LLaMA-family decoder in transformers has the same shape: an embedding, a list of decoder
blocks, a final norm and an lm_head. An :class:`ArchSpec` says where those live and which linear
layers of a block run in sequence (GPTQ's "true sequential" order), so that the block-wise driver,
the pruner and the exporters never hard-code module names.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import UserError
from .experts import unfuse_experts

LLAMA_SEQUENTIAL: tuple[tuple[str, ...], ...] = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)
# Phi-3 fuses q/k/v into one qkv_proj and gate/up into one gate_up_proj: each is one matrix, one
# Hessian, and keeps its fused name in checkpoints.
FUSED_SEQUENTIAL: tuple[tuple[str, ...], ...] = (
    ("self_attn.qkv_proj",),
    ("self_attn.o_proj",),
    ("mlp.gate_up_proj",),
    ("mlp.down_proj",),
)
# Gemma 2/3 norm each branch's output too (``h + post_norm(part(pre_norm(h)))``): the next
# branch's pre-norm is pre_feedforward_layernorm. A skipped branch still adds nothing, as an
# RMSNorm maps zero to zero, so the driver's residual carry holds (tested per architecture).
GEMMA_PART_NORMS = ("input_layernorm", "pre_feedforward_layernorm")


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
    # Mixtures of experts: the block's experts module (one module per expert in llmshrink, named
    # ``{experts}.{e}.{gate, up, down}``: see ``models.experts``; the router is no linear layer of
    # the spec, so it stays in full precision). ``sequential`` then lists the attention's groups
    # only; :meth:`with_experts` adds each expert's gate/up group and down group.
    experts: str | None = None
    expert_linears: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
    # (module name, checkpoint name) pairs where the checkpoints on disk name a module otherwise than
    # transformers' model does (Mixtral's ``mlp`` is ``block_sparse_moe`` on disk)
    disk: tuple[tuple[str, str], ...] = ()
    # Groups solved together, by index into ``sequential`` (None: one group per stage). Every
    # expert's gate/up reads its share of the same input, so they form one stage, their downs another.
    stages: tuple[tuple[int, ...], ...] | None = None
    # A shared expert beside the routed ones (Qwen2-MoE): its gate/up group and its down group, solved
    # in the routed experts' stages, first, as it runs first (it reads every token of the same
    # input); its gate, like the router, stays in full precision.
    shared: tuple[tuple[str, ...], ...] = ()

    def with_experts(self, n: int) -> ArchSpec:
        """This (registered) spec for a model of ``n`` experts per block: each expert's linears, staged."""
        if self.experts is None:
            return self
        gate, up, down = self.expert_linears
        base = self.sequential
        shared_up, shared_down = self.shared or ((), ())
        ups = tuple((f"{self.experts}.{e}.{gate}", f"{self.experts}.{e}.{up}") for e in range(n))
        downs = tuple((f"{self.experts}.{e}.{down}",) for e in range(n))
        # the shared expert runs before the routed ones (the stage ends at its last group's hook)
        ups, downs = ((shared_up,) if shared_up else ()) + ups, ((shared_down,) if shared_down else ()) + downs
        k, u = len(base), len(ups)
        stages = (*((i,) for i in range(k)), tuple(range(k, k + u)), tuple(range(k + u, k + u + len(downs))))
        return replace(self, sequential=(*base, *ups, *downs), stages=stages)

    def to_disk(self, name: str) -> str:
        """A tensor or module name (full or block-local) as the checkpoints on disk spell it."""
        for ours, theirs in self.disk:
            name = ("." + name).replace(f".{ours}.", f".{theirs}.")[1:]
        return name

    def from_disk(self, name: str) -> str:
        for ours, theirs in self.disk:
            name = ("." + name).replace(f".{theirs}.", f".{ours}.")[1:]
        return name

    def expert_of(self, name: str) -> int | None:
        """The expert a block-local linear name belongs to, or None."""
        if self.experts is None or not name.startswith(self.experts + "."):
            return None
        return int(name[len(self.experts) + 1:].split(".", 1)[0])

    @property
    def stage_groups(self) -> list[list[tuple[str, ...]]]:
        """The groups of each true-sequential stage, in order."""
        if self.stages is None:
            return [[g] for g in self.sequential]
        return [[self.sequential[i] for i in stage] for stage in self.stages]

    @property
    def linear_names(self) -> tuple[str, ...]:
        return tuple(name for group in self.sequential for name in group)

    def part_linears(self, part: str) -> tuple[str, ...]:
        return tuple(n for n in self.linear_names if n.startswith(part + "."))

    def blocks(self, model: torch.nn.Module) -> torch.nn.ModuleList:
        return model.get_submodule(self.layers)  # type: ignore[return-value]

    def block_linears(self, block: torch.nn.Module) -> dict[str, torch.nn.Linear]:
        return {name: block.get_submodule(name) for name in self.linear_names}  # type: ignore[misc]


def logit_cap(model: torch.nn.Module) -> float | None:
    """The model's final-logit soft-capping ``c`` (Gemma 2), or None."""
    cfg = getattr(model, "config", None)
    return getattr(cfg.get_text_config() if cfg is not None else None, "final_logit_softcapping", None) or None


def soft_cap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """``logits`` as the model's forward returns them (``c·tanh(x/c)`` where it soft-caps), for
    code that runs the final norm and lm_head itself."""
    return logits if cap is None else torch.tanh(logits / cap) * cap


def untie_lm_head(model: torch.nn.Module, arch: ArchSpec) -> bool:
    """Give lm_head a weight of its own (a copy of the embedding it shares, frozen), so that changing
    it (quantizing, training) leaves the embedding alone; the config then says so. True if it was tied."""
    head, emb = model.get_submodule(arch.lm_head), model.get_submodule(arch.embed)
    if head.weight is not emb.weight and head.weight.data_ptr() != emb.weight.data_ptr():
        return False
    head.weight = torch.nn.Parameter(emb.weight.detach().clone(), requires_grad=False)
    cfg = getattr(model, "config", None)
    if cfg is not None:
        for c in {id(c): c for c in (cfg, cfg.get_text_config())}.values():
            c.tie_word_embeddings = False
    return True


def block_range(spec: str | None, n_blocks: int) -> range:
    """``A:B`` (a Python slice: ends optional, negative counts from the end), ``N`` (block N alone)
    or None/``all`` -> the range of block indices, checked against a model of ``n_blocks``."""
    if spec is None or spec in ("", ":", "all"):
        return range(n_blocks)
    check_range_syntax(spec)
    try:
        if ":" in spec:
            a, _, b = spec.partition(":")
            start, stop = int(a) if a else 0, int(b) if b else n_blocks
            start, stop = (start + n_blocks if start < 0 else start), (stop + n_blocks if stop < 0 else stop)
            r = range(start, stop)
        else:
            r = range(int(spec), int(spec) + 1)
    except ValueError:
        raise UserError(f"bad block range {spec!r}: write A:B, e.g. 0:26 (or 0:-4: all but the last four)") from None
    check_block_range(r, n_blocks, spec)
    return r


def check_range_syntax(spec: str | None) -> None:
    """What can be said of a block range before the model is known: it parses, and it is not
    reversed or empty whatever the model's depth (ends of the same sign)."""
    if spec is None or spec in ("", ":", "all"):
        return
    a, colon, b = spec.partition(":")
    try:
        start, stop = int(a) if a else None, int(b) if b else None
    except ValueError:
        raise UserError(f"bad block range {spec!r}: write A:B, e.g. 0:26 (or 0:-4: all but the last four)") from None
    if colon and start is not None and stop is not None and (start < 0) == (stop < 0) and stop <= start:
        raise UserError(f"block range {spec} is empty or reversed: write A:B with A < B, e.g. {stop}:{start}"
                        if stop < start else f"block range {spec} is empty: write A:B with A < B")


def check_block_range(r: range, n_blocks: int, spec: str | None = None) -> None:
    spec = spec or f"{r.start}:{r.stop}"
    if r.stop <= r.start and 0 <= r.start <= n_blocks and 0 <= r.stop <= n_blocks:
        raise UserError(f"block range {spec} is empty or reversed: write A:B with A < B, e.g. 0:{n_blocks}")
    if len(r) == 0 or r.start < 0 or r.stop > n_blocks:
        raise UserError(f"block range {spec} is outside the model's {n_blocks} blocks: write a range within 0:{n_blocks}")


# model_type (config.json) -> spec. Adding a LLaMA-shaped architecture is one line here.
ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama"),
    "mistral": ArchSpec("mistral"),
    "qwen2": ArchSpec("qwen2"),
    "qwen3": ArchSpec("qwen3"),
    "gemma2": ArchSpec("gemma2", part_norms=GEMMA_PART_NORMS),
    "gemma3_text": ArchSpec("gemma3_text", part_norms=GEMMA_PART_NORMS),
    "phi3": ArchSpec("phi3", sequential=FUSED_SEQUENTIAL),
    "mixtral": ArchSpec("mixtral", sequential=LLAMA_SEQUENTIAL[:2], experts="mlp.experts",
                        expert_linears=("w1", "w3", "w2"), disk=(("mlp", "block_sparse_moe"),)),
    "qwen3_moe": ArchSpec("qwen3_moe", sequential=LLAMA_SEQUENTIAL[:2], experts="mlp.experts"),
    "qwen2_moe": ArchSpec("qwen2_moe", sequential=LLAMA_SEQUENTIAL[:2], experts="mlp.experts",
                          shared=(("mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj"),
                                  ("mlp.shared_expert.down_proj",))),
}


def _n_experts(config) -> int:
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    return int(get("num_experts", None) or get("num_local_experts", None) or 0)


def arch_for(model_type: str | None, config=None) -> ArchSpec:
    """The spec of ``model_type``; for a mixture of experts, of a model with ``config``'s expert count."""
    spec = ARCHITECTURES.get(model_type or "")
    if spec is None:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise UserError(
            f"unsupported architecture {model_type!r}: llmshrink handles {supported}; "
            "use a model of one of these types"
        )
    if spec.experts is not None and config is not None:
        spec = spec.with_experts(_n_experts(config))
    return spec


def arch_of(model: torch.nn.Module) -> ArchSpec:
    config = getattr(model, "config", None)
    return arch_for(getattr(config, "model_type", None), config)


def prepare_modules(model: torch.nn.Module, arch: ArchSpec) -> torch.nn.Module:
    """``model`` in llmshrink's module layout, in place: a mixture of experts gets a module per
    expert (on whatever device its weights are, meta included)."""
    if arch.experts is not None:
        unfuse_experts(model, arch.layers, arch.experts, arch.expert_linears)
    return model
