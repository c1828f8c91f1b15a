"""Save a quantized model as a Hugging Face GPTQ checkpoint (``checkpoint_format: gptq``).

Quantized linear layers become :class:`QuantLinear` modules holding ``qweight``, ``qzeros``,
``scales`` and ``g_idx``; everything else stays in full precision, so a checkpoint whose first K
blocks alone are quantized is an ordinary mixed checkpoint. ``config.json`` gains a
``quantization_config``. The folder appears atomically.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from ..config import QuantConfig
from ..errors import UserError
from ..quant.api import QuantizeReport
from ..quant.qlinear import QuantLinear


def pack_model(model: torch.nn.Module, report: QuantizeReport) -> None:
    """Replace each quantized ``nn.Linear`` by its packed :class:`QuantLinear`, in place."""
    bits = report.config.bits
    for name, res in report.results.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, QuantLinear.from_result(getattr(parent, child), res, bits))


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
        "quantized_modules": sorted(report.results),
    }


def save_quantized(model: torch.nn.Module, tokenizer, report: QuantizeReport, out_dir: Path, *,
                   extra_files: dict[str, str] | None = None) -> Path:
    out_dir = Path(out_dir)
    if not out_dir.parent.is_dir():
        raise UserError(f"the folder {out_dir.parent} does not exist: create it or choose another --out")
    pack_model(model, report)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    tmp.chmod(0o755)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["quantization_config"] = quantization_config(report.config, report)
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
