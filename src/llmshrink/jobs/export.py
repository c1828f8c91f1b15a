"""The export job behind ``llmshrink export``: compute (GPTQ on the target's grid, through the
driver), then hand the result to the exporter of the chosen ``--format``."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..config import Config, Part
from ..data.calib import CalibConfig, calibration_windows
from ..errors import UserError
from ..exporters.config import GGUFConfig
from ..exporters.gguf import GGUFReport, check_exportable, float_blocks, plan_tensor_types, write_gguf
from ..exporters.hf import save_folder
from ..models.load import LoadedModel
from ..paths import output_path
from ..quant.config import QuantConfig
from ..quant.driver import quantize_model
from ..quant.gptq import QuantResult
from ..quant.qlinear import QuantLinear

log = logging.getLogger(__name__)


def solve_blocks(lm: LoadedModel, qcfg: QuantConfig, calib: CalibConfig, progress=None, *,
                 layer_config: Callable[[str], QuantConfig | None] | None = None) -> dict[str, QuantResult]:
    """GPTQ (or RTN) on a GGML grid for the model's plain blocks: {full layer name: result}; with
    ``layer_config``, each layer on the grid of its own type (None: left in float)."""
    todo = float_blocks(lm)
    if todo is None:
        return {}
    windows = calibration_windows(lm.tokenizer, calib) if qcfg.method == "gptq" else None
    report = quantize_model(lm.model, lm.arch, windows, qcfg, layer_config=layer_config, blocks=todo,
                            batch_size=calib.batch_size, progress=progress)
    return report.results


def _layer_configs(lm: LoadedModel, cfg: GGUFConfig) -> Callable[[str], QuantConfig | None] | None:
    """For a mix, each linear's solve settings on its planned type's grid; None for one type."""
    if cfg.mix is None:
        return None
    plan = plan_tensor_types(lm, cfg)
    configs = {n: cfg.quant_config(t.name) if t.quantized else None for n, t in plan.linears.items()}
    return configs.__getitem__


def export_gguf(lm: LoadedModel, cfg: GGUFConfig, out: Path, *, calib: CalibConfig | None = None,
                progress=None) -> GGUFReport:
    """Write ``lm`` to ``out`` as GGUF of ``cfg.type``; GPTQ-solved when the type is block-quantized."""
    t0 = time.perf_counter()
    out = output_path(out)
    check_exportable(lm, cfg)  # refuse an unrepresentable model before solving
    qcfg = cfg.quant_config()
    results = (solve_blocks(lm, qcfg, calib or CalibConfig(), progress, layer_config=_layer_configs(lm, cfg))
               if qcfg is not None else {})
    return write_gguf(lm, cfg, out, results, t0=t0)


def export_hf_gptq(lm: LoadedModel, cfg: Config | None, out: Path, *, calib: CalibConfig | None = None,
                   progress=None) -> Path:
    """Re-write a model whose layers are packed already (a GPTQ checkpoint, a tuned mixed one) as a
    Hugging Face GPTQ folder; a plain model is quantized by ``llmshrink quantize``."""
    out = output_path(out)
    if not any(isinstance(m, QuantLinear) for m in lm.model.modules()):
        raise UserError(f"{lm.name} has no quantized layers to write as GPTQ: quantize it with "
                        f"llmshrink quantize {lm.name} --out DIR")
    qc = json.loads((lm.path / "config.json").read_text()).get("quantization_config")
    return save_folder(lm.model, lm.tokenizer, out, quantization_config=qc,
                       copy_from=lm.path, copy=("llmshrink_quantize.json", "quantize_layers.jsonl"))


@dataclass(frozen=True)
class Exporter:
    """One ``--format``: its settings class (None: none) and the function that writes it."""

    help: str
    config: type[Config] | None
    write: Callable[..., object]
    calibrates: bool


EXPORTERS: dict[str, Exporter] = {
    "gguf": Exporter("a GGUF file for llama.cpp (GPTQ solved on each block type's grid; K mixes typed as "
                     "llama.cpp types them)", GGUFConfig, export_gguf, True),
    "hf-gptq": Exporter("a Hugging Face GPTQ folder of a model quantized already", None, export_hf_gptq, False),
}


@dataclass
class ExportFormat(Config):
    """Which exporter writes the output."""

    kind: ClassVar[str] = "export"
    format: str = field(default="gguf", metadata={"help": "output format: " + ", ".join(EXPORTERS),
                                                  "choices": tuple(EXPORTERS)})

    def __post_init__(self) -> None:
        self.one_of("format", EXPORTERS, "format")


PARTS = (Part("format", ExportFormat), Part("gguf", GGUFConfig), Part("calib", CalibConfig, nested=True))


def run_export(lm: LoadedModel, fmt: str, cfg: Config | None, out: Path, *, calib: CalibConfig | None = None,
               progress=None):
    """Export ``lm`` in format ``fmt`` to ``out`` (the exporter's own settings in ``cfg``)."""
    exporter = EXPORTERS[fmt]
    return exporter.write(lm, cfg, out, calib=calib, progress=progress)
