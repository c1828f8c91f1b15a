"""Which modules of a GPTQ checkpoint are packed, in the fields other loaders read.

- ``dynamic`` (GPTQModel, vLLM, SGLang): regex rules over full module names; the first that
  matches decides; a ``-:`` rule leaves the module unquantized (``+:`` rules override settings).
- ``modules_in_block_to_quantize`` (optimum/transformers, vLLM): the modules to pack. optimum
  keeps a module whose name *ends with* an entry, vLLM one that *contains* an entry; full names
  (``model.layers.3.mlp.down_proj``) mean the same to both.

A mixed checkpoint (``--blocks 0:26``) states both, so every reader builds packed layers exactly
where the safetensors hold them; llmshrink's own reader checks that the two agree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


def _block_index(name: str, layers: str) -> tuple[int, str] | None:
    head, _, rest = name.partition(layers + ".")
    if head or not rest:
        return None
    index, _, local = rest.partition(".")
    return (int(index), local) if index.isdigit() else None


def skip_rules(quantized: Iterable[str], linears: Iterable[str], layers: str) -> dict[str, dict]:
    """``dynamic`` negative rules for the block ``linears`` (full names) not in ``quantized``:
    one rule for all wholly full-precision blocks, one per module of a partly quantized block."""
    quantized = set(quantized)
    blocks: dict[int, list[str]] = {}
    for name in linears:
        found = _block_index(name, layers)
        if found is not None:
            blocks.setdefault(found[0], []).append(name)
    whole = sorted(i for i, names in blocks.items() if not quantized.intersection(names))
    rules: dict[str, dict] = {}
    if whole:
        rules[f"-:{re.escape(layers)}\\.(?:{'|'.join(map(str, whole))})\\..*"] = {}
    for i in sorted(set(blocks) - set(whole)):
        for name in blocks[i]:
            if name not in quantized:
                rules[f"-:{re.escape(name)}$"] = {}
    return rules


def packed_per_config(qc: dict, name: str) -> bool | None:
    """Whether ``qc`` (a ``quantization_config``) says module ``name`` is packed, as GPTQModel and
    vLLM read ``dynamic`` and vLLM reads ``modules_in_block_to_quantize``; None when it says
    nothing about modules (older checkpoints: the safetensors alone tell)."""
    for pattern in qc.get("dynamic") or {}:
        negative = pattern.startswith("-:")
        if re.match(pattern[2:] if pattern.startswith(("-:", "+:")) else pattern, name):
            if negative:
                return False
            break
    listed = qc.get("modules_in_block_to_quantize")
    if not listed:
        return True if qc.get("dynamic") else None
    flat = [m for group in listed for m in (group if isinstance(group, list) else [group])]
    return any(m in name for m in flat)
