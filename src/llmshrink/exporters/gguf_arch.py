"""What each architecture is in llama.cpp's terms: its GGUF architecture, tensor names, the
hyperparameters beyond LLaMA's, and how its tensors differ from transformers' (LLaMA's q/k
rows interleaved for RoPE, Gemma's norms written as ``1 + w``). One small record per
``model_type``, the way ``convert_hf_to_gguf.py`` describes them; what llama.cpp would run
differently from transformers is refused or warned about here, before anything is solved.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import gguf

from ..errors import UserError

log = logging.getLogger(__name__)


def _no_keys(w: gguf.GGUFWriter, config) -> None:
    pass


def _gemma_keys(w: gguf.GGUFWriter, config) -> None:
    for attr, add in (("attn_logit_softcapping", w.add_attn_logit_softcapping),
                      ("final_logit_softcapping", w.add_final_logit_softcapping)):
        if getattr(config, attr, None):
            add(float(getattr(config, attr)))
    if getattr(config, "sliding_window", None):
        w.add_sliding_window(int(config.sliding_window))


def _qwen3_moe_keys(w: gguf.GGUFWriter, config) -> None:
    w.add_expert_count(int(config.num_experts))
    w.add_expert_used_count(int(config.num_experts_per_tok))
    w.add_expert_feed_forward_length(int(config.moe_intermediate_size))


def _qwen2_moe_keys(w: gguf.GGUFWriter, config) -> None:
    _qwen3_moe_keys(w, config)
    w.add_expert_shared_feed_forward_length(int(config.shared_expert_intermediate_size))


def _llama_keys(w: gguf.GGUFWriter, config) -> None:
    if getattr(config, "num_local_experts", None):  # Mixtral: llama with experts
        w.add_expert_count(int(config.num_local_experts))
        w.add_expert_used_count(int(config.num_experts_per_tok))


def _check_qwen3_moe(config) -> None:
    if not getattr(config, "norm_topk_prob", False):
        raise UserError("llama.cpp's qwen3moe renormalizes the chosen experts' weights, this model does not "
                        "(norm_topk_prob false): export a Hugging Face checkpoint instead")


def _check_qwen2_moe(config) -> None:
    if getattr(config, "norm_topk_prob", False):
        raise UserError("llama.cpp's qwen2moe keeps the chosen experts' softmax weights as they are, this model "
                        "renormalizes them (norm_topk_prob true): export a Hugging Face checkpoint instead")
    if getattr(config, "tie_word_embeddings", False):
        raise UserError("llama.cpp's qwen2moe reads an output matrix of its own, this model ties it to the "
                        "embedding: export a Hugging Face checkpoint instead")


@dataclass(frozen=True)
class GGUFArch:
    name: str  # llama.cpp's architecture (general.architecture and the key prefix)
    model_arch: gguf.MODEL_ARCH  # gguf-py's tensor name map
    rope_rows: bool = False  # q/k rows interleaved as llama.cpp's (non-NeoX) RoPE reads them
    norm_shift: float = 0.0  # added to every norm weight (Gemma's RMSNorm scales by 1 + w)
    swa_every: int = 0  # llama.cpp's fixed pattern: every n-th layer full, the others sliding (0: none slide)
    output: bool = True  # the file may hold an untied output matrix
    big: int = 0  # the block count at which llama.cpp scales queries by 1/sqrt(hidden/heads) (Gemma 27B)
    local_rope: bool = False  # sliding layers have a RoPE of their own (Gemma 3): the pattern must match
    keys: Callable[[gguf.GGUFWriter, object], None] = _no_keys
    check: Callable[[object], None] = lambda config: None  # what else llama.cpp would compute otherwise


LLAMA = GGUFArch("llama", gguf.MODEL_ARCH.LLAMA, rope_rows=True, keys=_llama_keys)

# transformers model_type -> llama.cpp architecture.
GGUF_ARCHES: dict[str, GGUFArch] = {
    "llama": LLAMA,
    "mistral": LLAMA,
    "mixtral": LLAMA,
    "qwen2": GGUFArch("qwen2", gguf.MODEL_ARCH.QWEN2),
    "qwen3": GGUFArch("qwen3", gguf.MODEL_ARCH.QWEN3),
    "gemma2": GGUFArch("gemma2", gguf.MODEL_ARCH.GEMMA2, norm_shift=1.0, swa_every=2, output=False, big=46,
                       keys=_gemma_keys),
    "gemma3_text": GGUFArch("gemma3", gguf.MODEL_ARCH.GEMMA3, norm_shift=1.0, swa_every=6, big=62,
                            local_rope=True, keys=_gemma_keys),
    "phi3": GGUFArch("phi3", gguf.MODEL_ARCH.PHI3),
    "qwen3_moe": GGUFArch("qwen3moe", gguf.MODEL_ARCH.QWEN3MOE, keys=_qwen3_moe_keys, check=_check_qwen3_moe),
    "qwen2_moe": GGUFArch("qwen2moe", gguf.MODEL_ARCH.QWEN2MOE, keys=_qwen2_moe_keys, check=_check_qwen2_moe),
}


def gguf_arch_of(model_type: str | None) -> GGUFArch:
    arch = GGUF_ARCHES.get(model_type or "")
    if arch is None:
        raise UserError(f"GGUF export handles {', '.join(sorted(GGUF_ARCHES))} models, not {model_type!r}: "
                        "export this model as a Hugging Face checkpoint instead")
    return arch


def check_gguf_arch(arch: GGUFArch, config, tied: bool) -> None:
    """Refuse what llama.cpp would compute differently from transformers; warn where it differs
    only past the sliding window."""
    if not tied and not arch.output:
        raise UserError(f"llama.cpp's {arch.name} always ties the output to the embedding, and this model's "
                        "lm_head is its own: export a Hugging Face checkpoint, or quantize without --lm-head")
    arch.check(config)
    scalar = getattr(config, "query_pre_attn_scalar", None)
    if scalar is not None:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        theirs = config.hidden_size / config.num_attention_heads if config.num_hidden_layers == arch.big else head_dim
        if not math.isclose(scalar, theirs):
            raise UserError(f"llama.cpp's {arch.name} scales queries by 1/sqrt({theirs:g}) for a model of "
                            f"{config.num_hidden_layers} blocks, this model by 1/sqrt({scalar:g}): "
                            "export a Hugging Face checkpoint instead")
    window = getattr(config, "sliding_window", None)
    # no layer_types but a window (Mistral, Phi-3): every layer slides
    types = getattr(config, "layer_types", None) or (["sliding_attention"] * config.num_hidden_layers if window else None)
    if types and window:
        expected = ["full_attention" if arch.swa_every and (i + 1) % arch.swa_every == 0 else
                    ("sliding_attention" if arch.swa_every else "full_attention") for i in range(len(types))]
        if list(types) == expected:
            return
        if arch.local_rope:
            raise UserError(f"llama.cpp's {arch.name} makes every {arch.swa_every}th layer a full-attention one with "
                            f"its own RoPE, this model's layer_types differ ({','.join(t[0] for t in types)}; a "
                            "pruned model?): export a Hugging Face checkpoint instead")
        log.warning("llama.cpp's %s slides its %d-token window over other layers than this model does "
                    "(layer_types %s): the GGUF file agrees with transformers within %d tokens of context only",
                    arch.name, window, ",".join(t[0] for t in types), window)
