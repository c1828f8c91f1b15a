"""What a GPTQ checkpoint's settings allow its consumers to do, said before quantizing.

The kernels people load GPTQ checkpoints with have shape rules of their own: transformers and
GPTQModel on CPU pick torch's int4 kernel (``_weight_int4pack_mm_cpu``), vLLM's GPTQ and Marlin
kernels split the input width into whole groups; each refuses a layer whose width the group size
does not divide (SmolLM2's 576: any of 128). vLLM refuses act-order checkpoints whose groups follow
the solve order (``desc_act``), and its CPU build packs only 4- and 8-bit symmetric ones.
llmshrink itself, GPTQModel's ``gptq_torch`` backend and the GGUF exporter take any.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from ..quant.config import AUTO_GROUP, QuantConfig

STANDARD_GROUPS = (128, 64, 32)  # the group sizes every GPTQ kernel takes, largest first


def dividing_groups(widths: Mapping[str, int]) -> list[int]:
    return [g for g in STANDARD_GROUPS if all(w % g == 0 for w in widths.values())]


def auto_group_size(widths: Mapping[str, int]) -> int:
    """The largest standard group size dividing every width (-1, one group per row, if none does)."""
    fits = dividing_groups(widths)
    return fits[0] if fits else -1


def resolve_group_size(cfg: QuantConfig, widths: Mapping[str, int]) -> QuantConfig:
    """``cfg`` with ``group_size: auto`` replaced by the size :func:`auto_group_size` picks."""
    if cfg.group_size != AUTO_GROUP:
        return cfg
    return dataclasses.replace(cfg, group_size=auto_group_size(widths))


def compatibility_notes(cfg: QuantConfig, widths: Mapping[str, int]) -> list[str]:
    """One line per consumer family these settings rule out, with the reason and the fix."""
    notes = []
    ragged = sorted((n for n, w in widths.items() if not cfg.per_row and w % cfg.group_size), key=str)
    if ragged:
        fits = dividing_groups(widths)
        more = f" and {len(ragged) - 1} more layers" if len(ragged) > 1 else ""
        hint = (f"group sizes that divide every width: {', '.join(map(str, fits))} (--group-size auto picks "
                f"{fits[0]})") if fits else "no standard group size divides every width (--group-size -1 does)"
        notes.append(f"group size {cfg.group_size} does not divide the input width {widths[ragged[0]]} of "
                     f"{ragged[0]}{more}: transformers and GPTQModel (CPU int4 kernel), vLLM and Marlin refuse "
                     f"such layers; only llmshrink, GPTQModel's gptq_torch backend and GGUF export read them; "
                     f"{hint}")
    if cfg.permuted_groups:
        notes.append("act-order with groups in solve order (desc_act) is refused by vLLM (0.2x and later); "
                     "--static-groups keeps act-order's solve with consecutive groups, a checkpoint every loader reads")
    if cfg.bits not in (4, 8) or not cfg.sym:
        notes.append(f"vLLM on CPU runs 4- and 8-bit symmetric GPTQ checkpoints only, not "
                     f"{cfg.bits}-bit {'symmetric' if cfg.sym else 'asymmetric'}")
    return notes
