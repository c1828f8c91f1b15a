"""Pre-tokenizers: how a byte-level BPE tokenizer splits text before merging, by llama.cpp's name.

A tokenizer.json states its pre-tokenizer as a tree of parts (a digit splitter, a regex split, the
byte-level mapping); a GGUF states it as one name (``tokenizer.ggml.pre``) that llama.cpp maps to
its own regexes (llama-vocab.cpp). This table goes both ways: the GGUF exporter names what a
tokenizer does, and the GGUF converter restores the parts the name stands for (transformers'
GGUF reader builds a plain GPT-2 pre-tokenizer whatever the name, which splits digits and
spaces differently from the model's own tokenizer and from llama.cpp).
"""

from __future__ import annotations

import json

# The split regexes of tokenizer.json files that llama.cpp knows by name.
LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
QWEN2_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
               "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def _byte_level(use_regex: bool) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def _split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


# llama.cpp's pre-tokenizer name -> the tokenizer.json parts that split text the same way.
PARTS: dict[str, list[dict]] = {
    "gpt-2": [_byte_level(True)],
    "smollm": [{"type": "Digits", "individual_digits": True}, _byte_level(True)],
    "llama-bpe": [_split(LLAMA3_SPLIT), _byte_level(False)],
    "qwen2": [_split(QWEN2_SPLIT), _byte_level(False)],
}


def _describe(part: dict) -> tuple:
    """What of a part decides how text splits (offsets trimming does not)."""
    kind = part.get("type")
    if kind == "ByteLevel":
        return ("ByteLevel", bool(part.get("use_regex", True)), bool(part.get("add_prefix_space", False)))
    if kind == "Digits":
        return ("Digits", bool(part.get("individual_digits", False)))
    if kind == "Split":
        return ("Split", (part.get("pattern") or {}).get("Regex"), part.get("behavior"), bool(part.get("invert")))
    return (kind,)


def _parts(spec: dict | None) -> list[dict]:
    if not spec:
        return []
    return spec.get("pretokenizers", []) if spec.get("type") == "Sequence" else [spec]


_BY_SHAPE = {tuple(_describe(p) for p in parts): name for name, parts in PARTS.items()}


def name_of(spec: dict | None) -> str | None:
    """llama.cpp's name for a tokenizer.json ``pre_tokenizer``; None if it has none."""
    return _BY_SHAPE.get(tuple(_describe(p) for p in _parts(spec)))


def spec_for(name: str) -> dict | None:
    """The tokenizer.json ``pre_tokenizer`` llama.cpp's ``name`` stands for; None if unknown."""
    parts = PARTS.get(name)
    if parts is None:
        return None
    return parts[0] if len(parts) == 1 else {"type": "Sequence", "pretokenizers": parts}


def restore(tokenizer_json: dict, name: str) -> bool:
    """Give ``tokenizer_json`` (parsed, changed in place) the pre-tokenizer ``name`` stands for;
    True if it changed, False if it already split that way or the name is unknown."""
    spec = spec_for(name)
    if spec is None or name_of(tokenizer_json.get("pre_tokenizer")) == name:
        return False
    tokenizer_json["pre_tokenizer"] = json.loads(json.dumps(spec))
    return True
