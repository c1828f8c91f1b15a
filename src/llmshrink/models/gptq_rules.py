"""Which modules of a GPTQ checkpoint are packed, in the fields other loaders read.

- ``dynamic`` (GPTQModel, vLLM, SGLang): regex rules over full module names; the first that
  matches decides; a ``-:`` rule leaves the module unquantized (``+:`` rules override settings).
- ``modules_in_block_to_quantize`` (optimum/transformers, vLLM): the modules to pack. optimum
  keeps a module whose name *ends with* an entry, vLLM one that *contains* an entry; full names
  (``model.layers.3.mlp.down_proj``) mean the same to both.

A mixed checkpoint (``--blocks 0:26``) states both, so every reader builds packed layers exactly
where the safetensors hold them; llmshrink's own reader checks that the two agree. A
mixed-precision one (``--target-bpw``) gives the modules packed at another width than ``bits``
``+:`` rules with their ``bits``, one rule per width.
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


def bits_rules(widths: dict[str, int], default: int) -> dict[str, dict]:
    """``dynamic`` rules giving the modules of ``widths`` (full name -> bits) packed at another
    width than ``default`` their own: one ``+:`` rule per width, naming its modules."""
    by: dict[int, list[str]] = {}
    for name, b in sorted(widths.items()):
        if b != default:
            by.setdefault(b, []).append(name)
    return {f"+:(?:{'|'.join(map(re.escape, names))})$": {"bits": b} for b, names in sorted(by.items())}


def _first_rule(qc: dict, name: str) -> tuple[bool, dict] | None:
    """(negative?, overrides) of the first ``dynamic`` rule matching ``name`` (first match decides,
    as GPTQModel and vLLM read them); None when none does."""
    for pattern, over in (qc.get("dynamic") or {}).items():
        if re.match(pattern[2:] if pattern.startswith(("-:", "+:")) else pattern, name):
            return pattern.startswith("-:"), over or {}
    return None


def bits_per_config(qc: dict, name: str, default: int) -> int:
    """The width module ``name`` is packed at, as ``qc``'s ``dynamic`` rules say (``default``: the
    config's ``bits``)."""
    rule = _first_rule(qc, name)
    return int(rule[1].get("bits", default)) if rule is not None and not rule[0] else default


def packed_per_config(qc: dict, name: str) -> bool | None:
    """Whether ``qc`` (a ``quantization_config``) says module ``name`` is packed, as GPTQModel and
    vLLM read ``dynamic`` and vLLM reads ``modules_in_block_to_quantize``; None when it says
    nothing about modules (older checkpoints: the safetensors alone tell)."""
    rule = _first_rule(qc, name)
    if rule is not None and rule[0]:
        return False
    listed = qc.get("modules_in_block_to_quantize")
    if not listed:
        return True if qc.get("dynamic") else None
    flat = [m for group in listed for m in (group if isinstance(group, list) else [group])]
    return any(m in name for m in flat)
