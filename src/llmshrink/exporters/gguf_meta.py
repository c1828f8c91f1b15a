"""GGUF metadata for LLaMA-family models: hyperparameters and the tokenizer.

llama.cpp reads the ``llama.*`` keys for the shapes and RoPE, and builds its tokenizer from
``tokenizer.ggml.*``: token strings, types and BPE merges, a pre-tokenizer name (which regex
splits text before BPE), special token ids and the chat template. Everything is taken from the
loaded transformers config and tokenizer, so a pruned model (fewer blocks) or a fine-tuned one
writes its own values; tokenizers llama.cpp would split differently are refused, not guessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import gguf

from ..data.windows import bos_id
from ..errors import UserError
from ..models.pretokenizers import PARTS, name_of

# transformers model_type -> llama.cpp architecture (same tensors and graph).
GGUF_ARCHES = {"llama": "llama", "mistral": "llama"}


def gguf_arch(model_type: str | None) -> str:
    arch = GGUF_ARCHES.get(model_type or "")
    if arch is None:
        raise UserError(f"GGUF export handles {', '.join(sorted(GGUF_ARCHES))} models, not {model_type!r}: "
                        "export this model as a Hugging Face checkpoint instead")
    return arch


def _get(config, *names, default=None):
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def _rope(config) -> tuple[float, dict | None]:
    """(theta, scaling) from transformers 5's ``rope_parameters`` or the older fields."""
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta", _get(config, "rope_theta", default=10000.0))
    scaling = getattr(config, "rope_scaling", None)
    kind = params.get("rope_type") or (scaling or {}).get("rope_type") or (scaling or {}).get("type") or "default"
    if kind == "default":
        return float(theta), None
    if kind == "linear":
        factor = params.get("factor", (scaling or {}).get("factor"))
        return float(theta), {"type": "linear", "factor": float(factor)}
    raise UserError(f"RoPE scaling {kind!r} cannot be exported to GGUF by llmshrink yet: use a model with "
                    "default or linear RoPE, or export a Hugging Face checkpoint")


def add_general(w: gguf.GGUFWriter, source: dict, *, name: str, n_params: int, quantized: bool) -> None:
    """``general.*``: the source GGUF's own keys carried over (name, organization, finetune,
    license, languages, ...: see :func:`llmshrink.models.origin.source_general`), the size label
    of what is written (a pruned model is smaller than its source), and who quantized it.
    Without a source, the name is the MODEL argument."""
    carried = {k: v for k, v in source.items() if v is not None and k not in _WRITTEN}
    w.add_type(str(source.get("general.type") or "model"))
    w.add_name(str(source.get("general.name") or name))
    w.add_size_label(gguf.utility.size_label(n_params, 0, 0, 0))
    if quantized:
        w.add_quantized_by("llmshrink")
    for key, value in carried.items():
        if isinstance(value, list):
            w.add_array(key, value)
        elif isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_string(key, str(value))


# general.* keys add_general writes itself, or that describe the file rather than the model.
_WRITTEN = {"general.type", "general.name", "general.size_label", "general.quantized_by", "general.architecture",
            "general.file_type", "general.quantization_version", "general.alignment"}


def add_hparams(w: gguf.GGUFWriter, config, n_blocks: int) -> None:
    heads = config.num_attention_heads
    kv = _get(config, "num_key_value_heads", default=heads)
    hidden = config.hidden_size
    head_dim = _get(config, "head_dim", default=hidden // heads)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(hidden)
    w.add_block_count(n_blocks)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    w.add_vocab_size(config.vocab_size)
    w.add_rope_dimension_count(head_dim)
    if head_dim != hidden // heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    theta, scaling = _rope(config)
    w.add_rope_freq_base(theta)
    if scaling is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(scaling["factor"])


@dataclass
class Vocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str


def _pre_tokenizer(spec: dict | None) -> str:
    """llama.cpp's pre-tokenizer name for a tokenizers ``pre_tokenizer``, or an error."""
    name = name_of(spec)
    if name is None:
        desc = json.dumps(spec)[:200]
        raise UserError(f"this tokenizer's pre-tokenizer cannot be represented in GGUF by llmshrink yet ({desc}): "
                        f"supported are byte-level BPE splits llama.cpp calls {', '.join(PARTS)}")
    return name


def read_vocab(tokenizer, n_vocab: int) -> Vocab:
    """Tokens by id (padded to the embedding's ``n_vocab``), their types, merges, pre-tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError("GGUF export needs a fast (tokenizer.json) tokenizer: save the model with one")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UserError(f"a {model.get('type')} tokenizer{' with byte fallback' if model.get('byte_fallback') else ''}"
                        " cannot be represented in GGUF by llmshrink yet: only byte-level BPE is supported")
    if spec.get("normalizer") is not None:
        raise UserError("a tokenizer with a normalizer cannot be represented in GGUF by llmshrink yet")
    pre = _pre_tokenizer(spec.get("pre_tokenizer"))
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= n_vocab:
        raise UserError(f"the tokenizer has ids up to {max(vocab.values())} but the model only {n_vocab} "
                        "embeddings: the tokenizer does not belong to this model")
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [int(gguf.TokenType.UNUSED)] * n_vocab
    for text, i in vocab.items():
        tokens[i] = text
        if i in added:
            types[i] = int(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            types[i] = int(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return Vocab(tokens, types, merges, pre)


def add_tokenizer(w: gguf.GGUFWriter, tokenizer, n_vocab: int) -> None:
    v = read_vocab(tokenizer, n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(v.pre)
    w.add_token_list(v.tokens)
    w.add_token_types(v.types)
    w.add_token_merges(v.merges)
    for attr, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                      ("unk_token_id", w.add_unk_token_id), ("pad_token_id", w.add_pad_token_id)):
        tid = getattr(tokenizer, attr, None)
        if tid is not None:
            add(int(tid))
    w.add_add_bos_token(bos_id(tokenizer) is not None)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        w.add_chat_template(template)
