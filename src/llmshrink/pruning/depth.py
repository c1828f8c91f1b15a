"""Remove decoder blocks from a model, leaving a plain transformers model with fewer layers.

The block list is rebuilt without the removed blocks, every module that transformers keys by
layer index (``layer_idx`` of attention, used by the KV cache) is renumbered, and the config
shrinks: ``num_hidden_layers`` and the per-layer lists (``layer_types``, ...) named by the
architecture. ``save_pretrained`` then writes ``model.layers.0..`` keys that
``AutoModelForCausalLM.from_pretrained`` loads with no llmshrink code.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from ..models.arch import ArchSpec

# Config entries that hold one value per decoder layer; they shrink with the model.
PER_LAYER_CONFIG = ("layer_types",)


def remove_blocks(model: torch.nn.Module, arch: ArchSpec, remove: list[int] | set[int]) -> list[int]:
    """Drop the blocks ``remove`` from ``model`` in place; returns the original indices kept."""
    layers = arch.blocks(model)
    n = len(layers)
    remove = sorted(set(remove))
    if any(not 0 <= i < n for i in remove):
        raise UserError(f"block indices {remove} are outside the model's {n} blocks (0..{n - 1})")
    if len(remove) >= n:
        raise UserError(f"cannot remove {len(remove)} of the model's {n} blocks: at least one must stay")
    kept = [i for i in range(n) if i not in remove]
    parent_name, _, attr = arch.layers.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, torch.nn.ModuleList([layers[i] for i in kept]))
    for new, block in enumerate(arch.blocks(model)):
        for mod in block.modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = new
    cfg = model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    for c in {id(cfg): cfg, id(text_cfg): text_cfg}.values():
        if getattr(c, "num_hidden_layers", None) == n:
            c.num_hidden_layers = len(kept)
        for key in PER_LAYER_CONFIG:
            value = getattr(c, key, None)
            if isinstance(value, list) and len(value) == n:
                setattr(c, key, [value[i] for i in kept])
    return kept
