"""Save a quantized model as a Hugging Face GPTQ checkpoint (``checkpoint_format: gptq``).

Quantized linear layers become :class:`QuantLinear` modules holding ``qweight``, ``qzeros``,
``scales`` and ``g_idx``; everything else stays in full precision, so a checkpoint whose first K
blocks alone are quantized is an ordinary mixed checkpoint. ``config.json`` gains a
``quantization_config``. The folder appears atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import QuantConfig
from ..errors import UserError
from ..models.arch import ArchSpec
from ..paths import atomic_dir
from ..quant.api import QuantizeReport
from ..quant.pack import packing_multiple
from ..quant.qlinear import QuantLinear


def check_packable(model: torch.nn.Module, arch: ArchSpec, todo: range, lm_head: bool, bits: int) -> None:
    """Refuse, before hours of quantization, layers that the GPTQ layout cannot store."""
    per = packing_multiple(bits)
    layers = arch.blocks(model)
    mods = [(f"{arch.layers}.{i}.{n}", layers[i].get_submodule(n)) for i in todo for n in arch.linear_names]
    if lm_head:
        mods.append((arch.lm_head, model.get_submodule(arch.lm_head)))
    for name, mod in mods:
        if mod.in_features % per or mod.out_features % per:
            hint = "leave --lm-head off" if name == arch.lm_head else "choose other bits"
            raise UserError(f"{name} is {mod.out_features}x{mod.in_features}: {bits}-bit GPTQ packing needs both "
                            f"dimensions to be multiples of {per}; {hint}")


def pack_model(model: torch.nn.Module, report: QuantizeReport) -> None:
    """Replace each quantized ``nn.Linear`` by its packed :class:`QuantLinear`, in place (layers
    packed during quantization are already)."""
    bits = report.config.bits
    for name, res in report.results.items():
        model.set_submodule(name, QuantLinear.from_result(model.get_submodule(name), res, bits))


def quantization_config(cfg: QuantConfig, report: QuantizeReport, *, true_sequential: bool = True) -> dict:
    return {
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
        "bits": cfg.bits,
        "group_size": cfg.group_size,
        "desc_act": cfg.act_order,
        "sym": cfg.sym,
        "static_groups": cfg.static_groups,
        "true_sequential": true_sequential,
        "damp_percent": cfg.damp,
        "method": cfg.method,
        "lm_head": report.lm_head,
        "quantized_modules": sorted(r.name for r in report.layers),
    }


def save_quantized(model: torch.nn.Module, tokenizer, report: QuantizeReport, out_dir: Path, *,
                   extra_files: dict[str, str] | None = None) -> Path:
    out_dir = Path(out_dir)
    if report.config.grid != "zero":
        raise UserError(f"HF GPTQ checkpoints store scale/zero-point grids, not {report.config.grid!r} grids: "
                        "quantize with grid=zero, or export to GGUF")
    if not out_dir.parent.is_dir():
        raise UserError(f"the folder {out_dir.parent} does not exist: create it or choose another --out")
    pack_model(model, report)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["quantization_config"] = quantization_config(report.config, report)
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return out_dir
