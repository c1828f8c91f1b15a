"""One GGUF file: compute (GPTQ on each tensor's grid, through the driver), then write it."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..data.calib import CalibConfig, calibration_windows
from ..exporters.config import GGUFConfig
from ..exporters.gguf import GGUFReport, check_exportable, float_blocks, plan_tensor_types, write_gguf
from ..models.load import LoadedModel
from ..paths import claim_output
from ..quant.config import QuantConfig
from ..quant.driver import Resume, quantize_model
from ..quant.gptq import QuantResult
from .resume import BlockState


def solve_blocks(lm: LoadedModel, qcfg: QuantConfig, calib: CalibConfig, progress=None, *,
                 layer_config: Callable[[str], QuantConfig | None] | None = None,
                 windows: torch.Tensor | None = None, resume: Resume | None = None) -> dict[str, QuantResult]:
    """GPTQ (or RTN) on a GGML grid for the model's plain blocks: {full layer name: result}; with
    ``layer_config``, each layer on the grid of its own type (None: left in float). ``windows``:
    calibration windows made already (default: made from ``calib``); ``resume``: a resume point
    (finished blocks are kept there and not solved again)."""
    todo = float_blocks(lm)
    if todo is None:
        return {}
    if not qcfg.solves:
        windows = None
    elif windows is None:
        windows = calibration_windows(lm.tokenizer, calib)
    report = quantize_model(lm.model, lm.arch, windows, qcfg, layer_config=layer_config, blocks=todo,
                            batch_size=calib.batch_size, resume=resume, progress=progress)
    return report.results


def _layer_configs(lm: LoadedModel, cfg: GGUFConfig) -> Callable[[str], QuantConfig | None] | None:
    """For a mix, each linear's solve settings on its planned type's grid; None for one type."""
    if cfg.mix is None:
        return None
    plan = plan_tensor_types(lm, cfg)
    configs = {n: cfg.quant_config(t.name) if t.quantized else None for n, t in plan.linears.items()}
    return configs.__getitem__


def export_gguf(lm: LoadedModel, cfg: GGUFConfig, out: Path, *, calib: CalibConfig | None = None,
                progress=None, windows: torch.Tensor | None = None, overwrite: bool = False) -> GGUFReport:
    """Write ``lm`` to ``out`` as GGUF of ``cfg.type``; GPTQ-solved when the type is block-quantized
    (on ``windows`` when given, else on windows made from ``calib``). An existing ``out`` is
    replaced only with ``overwrite``."""
    t0 = time.perf_counter()
    out = claim_output(out, inputs=lm.sources, overwrite=overwrite, folder=False, need_bytes=lm.size_on_disk)
    check_exportable(lm, cfg)  # refuse an unrepresentable model before solving
    qcfg = cfg.quant_config()
    if qcfg is None:
        return write_gguf(lm, cfg, out, {}, t0=t0)
    calib = calib or CalibConfig()
    made_from = {"windows": hashlib.sha256(windows.numpy().tobytes()).hexdigest()} if windows is not None else \
        calib.to_dict() if qcfg.solves else None
    settings = {**lm.identity, "gguf": cfg.to_dict(), "calibration": made_from}
    if lm.blocks is not None and float_blocks(lm) is not None:  # the driver solves on a model in memory
        for i, block in enumerate(lm.arch.blocks(lm.model)):
            lm.blocks.materialize(i, block)
    # each finished block's solutions are kept beside the file: a killed export continues from there
    with BlockState.open(out, settings, lm.arch, discard_other=overwrite) as state:
        results = solve_blocks(lm, qcfg, calib, progress, layer_config=_layer_configs(lm, cfg), windows=windows,
                               resume=state)
        return write_gguf(lm, cfg, out, results, t0=t0)
