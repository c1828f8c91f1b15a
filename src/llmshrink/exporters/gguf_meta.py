"""GGUF metadata: hyperparameters and the tokenizer.

llama.cpp reads the ``<arch>.*`` keys for the shapes and RoPE, and builds its tokenizer from
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


def _get(config, *names, default=None):
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def rope_of(config) -> tuple[float, dict | None]:
    """(theta, scaling) of the full-attention layers, from transformers 5's ``rope_parameters``
    (one dict, or one per layer type as Gemma 3's) or the older fields. llama.cpp fixes the
    sliding layers' own RoPE (Gemma 3: theta 10000), so another one is refused."""
    params = getattr(config, "rope_parameters", None) or {}
    if "full_attention" in params:
        local = params.get("sliding_attention") or {}
        if local and (local.get("rope_theta") != 10000.0 or local.get("rope_type", "default") != "default"):
            raise UserError(f"llama.cpp gives sliding-window layers RoPE theta 10000, this model {local}: "
                            "export a Hugging Face checkpoint instead")
        params = params["full_attention"]
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


def _rotary_dims(config, head_dim: int) -> int:
    """How many of a head's dimensions RoPE turns (Phi's ``partial_rotary_factor``)."""
    params = getattr(config, "rope_parameters", None) or {}
    factor = params.get("partial_rotary_factor", _get(config, "partial_rotary_factor", default=1.0))
    return int(head_dim * factor)


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
    w.add_rope_dimension_count(_rotary_dims(config, head_dim))
    if head_dim != hidden // heads:  # llama.cpp's default otherwise
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    theta, scaling = rope_of(config)
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
    model: str = "gpt2"  # llama.cpp's tokenizer: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    scores: list[float] | None = None  # SentencePiece: the higher a piece's score, the earlier it is merged
    space_prefix: bool = False  # SentencePiece: "▁" put before the text


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
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return _sentencepiece_vocab(spec, tokenizer.get_vocab(), n_vocab)
    if model.get("type") != "BPE":
        raise UserError(f"a {model.get('type')} tokenizer cannot be represented in GGUF by llmshrink yet: "
                        "byte-level BPE (Llama 3, Qwen, SmolLM) and SentencePiece BPE (Llama 1/2, Mistral, Gemma) are")
    normalizer = spec.get("normalizer")
    if normalizer is not None and normalizer.get("type") != "NFC":
        raise UserError(f"a tokenizer with a {normalizer.get('type')} normalizer cannot be represented in GGUF by "
                        "llmshrink yet (NFC, as Qwen's, is: llama.cpp reads text already composed)")
    pre = _pre_tokenizer(spec.get("pre_tokenizer"))
    tokens, types = _tokens(spec, tokenizer.get_vocab(), n_vocab)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return Vocab(tokens, types, merges, pre)


def _tokens(spec: dict, vocab: dict[str, int], n_vocab: int) -> tuple[list[str], list[int]]:
    """Token strings by id, padded to ``n_vocab``, and their llama.cpp types (added special tokens
    are control tokens, other added ones user-defined; SentencePiece's ``<0xXX>`` are bytes)."""
    if max(vocab.values()) >= n_vocab:
        raise UserError(f"the tokenizer has ids up to {max(vocab.values())} but the model only {n_vocab} "
                        "embeddings: the tokenizer does not belong to this model")
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    byte_fallback = (spec.get("model") or {}).get("byte_fallback")
    unk = (spec.get("model") or {}).get("unk_token")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [int(gguf.TokenType.UNUSED)] * n_vocab
    for text, i in vocab.items():
        tokens[i] = text
        if byte_fallback and text == unk:
            types[i] = int(gguf.TokenType.UNKNOWN)
        elif i in added:
            types[i] = int(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        elif byte_fallback and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types[i] = int(gguf.TokenType.BYTE)
        else:
            types[i] = int(gguf.TokenType.NORMAL)
    return tokens, types


def _sentencepiece_vocab(spec: dict, vocab: dict[str, int], n_vocab: int) -> Vocab:
    """A SentencePiece tokenizer in transformers' form (BPE over "▁"-joined text with byte
    fallback: Llama 1/2, Mistral, Gemma) as llama.cpp's "llama" tokenizer: pieces, byte tokens,
    and scores that make llama.cpp merge in the same order as transformers' BPE (a piece scores
    minus the rank of the first merge that forms it)."""
    space_prefix = _sentencepiece_spaces(spec.get("normalizer"), spec.get("pre_tokenizer"))
    tokens, types = _tokens(spec, vocab, n_vocab)
    merges = [m.split(" ", 1) if isinstance(m, str) else m for m in spec["model"].get("merges", [])]
    rank: dict[str, int] = {}
    for r, (a, b) in enumerate(merges):
        rank.setdefault(a + b, r)
    floor = -float(len(merges) + 1)
    scores = [-float(rank[t]) if t in rank else (0.0 if types[i] != gguf.TokenType.NORMAL else floor)
              for i, t in enumerate(tokens)]
    return Vocab(tokens, types, [], "default", model="llama", scores=scores, space_prefix=space_prefix)


def _sentencepiece_spaces(normalizer: dict | None, pre: dict | None) -> bool:
    """Whether "▁" is put before the text, from the two forms transformers writes SentencePiece's
    whitespace handling in (a Prepend + Replace normalizer, or a Metaspace pre-tokenizer that does
    not split); anything else is refused."""
    if pre is None and normalizer is not None:
        steps = normalizer.get("normalizers", [normalizer]) if normalizer.get("type") == "Sequence" else [normalizer]
        kinds = [(n.get("type"), n.get("prepend") or (n.get("pattern") or {}).get("String"), n.get("content"))
                 for n in steps]
        if kinds in ([("Prepend", "▁", None), ("Replace", " ", "▁")], [("Replace", " ", "▁")]):
            return len(kinds) == 2
    if normalizer is None and (pre or {}).get("type") == "Metaspace" and (pre or {}).get("replacement") == "▁" \
            and not pre.get("split", True):
        return pre.get("prepend_scheme", "always") != "never"
    raise UserError(f"this SentencePiece tokenizer's whitespace handling cannot be represented in GGUF by llmshrink "
                    f"yet (normalizer {json.dumps(normalizer)[:120]}, pre-tokenizer {json.dumps(pre)[:120]})")


def add_tokenizer(w: gguf.GGUFWriter, tokenizer, n_vocab: int) -> None:
    v = read_vocab(tokenizer, n_vocab)
    w.add_tokenizer_model(v.model)
    w.add_tokenizer_pre(v.pre)
    w.add_token_list(v.tokens)
    w.add_token_types(v.types)
    if v.scores is not None:
        w.add_token_scores(v.scores)
    if v.merges:
        w.add_token_merges(v.merges)
    for attr, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                      ("unk_token_id", w.add_unk_token_id), ("pad_token_id", w.add_pad_token_id)):
        tid = getattr(tokenizer, attr, None)
        if tid is not None:
            add(int(tid))
    w.add_add_bos_token(bos_id(tokenizer) is not None)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(v.space_prefix)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        w.add_chat_template(template)
