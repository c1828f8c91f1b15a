"""Tiny random models of every architecture llmshrink claims, built from transformers' own config
classes, for the tests that run each command on each architecture.

Each spec sets what makes the architecture itself: Qwen2's biases and its sliding-window upper
layers, Qwen3's own head_dim, Gemma's post-norms, soft-capping and sliding-window layers (Gemma 2
alternating, Gemma 3 five sliding then a full one; a window of 8 tokens, shorter than the test
windows, so the per-layer masks matter), Phi-3's fused projections, and the mixtures of experts
(4 experts, 2 per token; Qwen2-MoE's shared expert beside them, and its own lm_head, as llama.cpp's
qwen2moe reads it), given a module per expert as llmshrink loads them.
"""

from __future__ import annotations

import importlib

import torch

# model_type -> (config class, model class, what differs from the shared tiny shape)
ARCHS: dict[str, tuple[str, str, dict]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 8}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               {"head_dim": 8, "query_pre_attn_scalar": 8, "sliding_window": 8, "final_logit_softcapping": 30.0,
                "attn_logit_softcapping": 50.0, "hidden_activation": "gelu_pytorch_tanh"}),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM",
                    {"head_dim": 8, "query_pre_attn_scalar": 8, "sliding_window": 8}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "head_dim": 16,
                   "norm_topk_prob": True}),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                   "shared_expert_intermediate_size": 64, "norm_topk_prob": False, "tie_word_embeddings": False}),
}


def make_arch_model(model_type: str, vocab_size: int, *, seed: int = 0, layers: int = 2, std: float = 0.3,
                    tie: bool = True, **overrides):
    """A tiny random model of ``model_type`` (hidden 32, 4 heads, 2 KV heads) in eval mode, its
    weights widened so that logits differ visibly per token; ``overrides``: config fields (the
    shape's too)."""
    cfg_name, model_name, extra = ARCHS[model_type]
    tf = importlib.import_module("transformers")
    torch.manual_seed(seed)
    shape = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=tie,
                 bos_token_id=1, eos_token_id=2, pad_token_id=2)
    cfg = getattr(tf, cfg_name)(**{**shape, **extra, **overrides})
    model = getattr(tf, model_name)(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 or p.dim() == 3:
                p.normal_(0, std)
            elif "norm" in name:  # Gemma's norms scale by 1 + w: random w keeps them from all being 1
                p.normal_(0, 0.1).add_(1.0 if not model_type.startswith("gemma") else 0.0)
            else:  # biases
                p.normal_(0, 0.1)
    from llmshrink.models.arch import arch_of, prepare_modules

    return prepare_modules(model, arch_of(model))  # a mixture of experts: one module per expert
