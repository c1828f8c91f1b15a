"""The export job behind ``llmshrink export``: compute (GPTQ on the target's grid, through the
driver), then hand the result to the exporter of the chosen ``--format``."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..config import Config, Part, command_line
from ..data.calib import CalibConfig
from ..errors import UserError
from ..exporters.config import GGUFConfig, HFGPTQConfig
from ..exporters.hf import quantization_config, relayout, release_dtype, save_folder
from ..models.gptq_layout import layout_for
from ..models.load import LoadedModel
from ..paths import claim_output
from ..quant.qlinear import QuantLinear
from .card import CARD, card_file
from .gguf_export import export_gguf, solve_blocks
from .ladder import LadderConfig, run_ladder

__all__ = ["EXPORTERS", "PARTS", "export_gguf", "run_export", "solve_blocks"]

log = logging.getLogger(__name__)


def export_hf_gptq(lm: LoadedModel, cfg: HFGPTQConfig | None, out: Path, *, calib: CalibConfig | None = None,
                   overwrite: bool = False, progress=None) -> Path:
    """Re-write a model whose layers are packed already (a GPTQ checkpoint, a tuned mixed one) as a
    Hugging Face GPTQ folder, its modules named as ``cfg.layout`` says; a plain model is quantized
    by ``llmshrink quantize``."""
    cfg = cfg or HFGPTQConfig()
    out = claim_output(out, inputs=lm.sources, overwrite=overwrite, need_bytes=lm.size_on_disk)
    packed = sorted(name for name, m in lm.model.named_modules() if isinstance(m, QuantLinear))
    if not packed:
        raise UserError(f"{lm.name} has no quantized layers to write as GPTQ: quantize it with "
                        f"llmshrink quantize {lm.name} --out DIR")
    source = json.loads((lm.path / "config.json").read_text())
    layout = layout_for(cfg.layout, source.get("model_type", ""))
    if layout is None and cfg.layout != "transformers":
        log.info("%s reads %s checkpoints under their own names: nothing to rename", cfg.layout, source.get("model_type"))
    scheme = {k: v for k, v in source["quantization_config"].items() if k != "dynamic"}
    qc = quantization_config({**scheme, "modules_in_block_to_quantize": [packed]}, lm.model, layout)
    return save_folder(lm.model, lm.tokenizer, out, quantization_config=qc, files={CARD: card_file(out)},
                       dtype=release_dtype("auto", lm.path, packed=True),
                       copy_from=lm.path, copy=("llmshrink_quantize.json", "quantize_layers.jsonl",
                                                "llmshrink_finetune.json", "llmshrink_evals.json"),
                       after=(lambda d: relayout(d, layout)) if layout is not None else None)


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
    "hf-gptq": Exporter("a Hugging Face GPTQ folder of a model quantized already", HFGPTQConfig, export_hf_gptq,
                        False),
}


@dataclass
class ExportFormat(Config):
    """Which exporter writes the output."""

    kind: ClassVar[str] = "export"
    format: str = field(default="gguf", metadata={"help": "output format: " + ", ".join(EXPORTERS),
                                                  "choices": tuple(EXPORTERS)})

    def __post_init__(self) -> None:
        self.one_of("format", EXPORTERS, "format")


PARTS = (Part("format", ExportFormat), Part("gguf", GGUFConfig), Part("hf", HFGPTQConfig), Part("ladder", LadderConfig),
         Part("calib", CalibConfig, nested=True))


def run_export(lm: LoadedModel, fmt: str, cfg: Config | None, out: Path, *, calib: CalibConfig | None = None,
               progress=None, ladder: LadderConfig | None = None, load: Callable[[], LoadedModel] | None = None,
               overwrite: bool = False):
    """Export ``lm`` in format ``fmt`` to ``out`` (the exporter's own settings in ``cfg``; an
    existing ``out`` is replaced only with ``overwrite``); with a ``ladder``, every file it names
    into the folder ``out`` (``load`` gives a fresh copy of the model for each solve; default: a
    copy of ``lm``), continuing a ladder of the same settings there."""
    if ladder is not None and ladder.ladder:
        if fmt != "gguf":
            raise UserError(f"--ladder writes GGUF files: drop --format {fmt} or --ladder")
        if load is None:  # no way to read the model again: solve on copies of it as given
            pristine = copy.deepcopy(lm)
            load = lambda: copy.deepcopy(pristine)  # noqa: E731
        command = command_line("export", lm.name, out, PARTS, {"format": ExportFormat(format=fmt), "gguf": cfg,
                                                              "ladder": ladder, "calib": calib})
        return run_ladder(lm, load, cfg or GGUFConfig(), ladder, Path(out), calib or CalibConfig(), progress=progress,
                          command=command)
    exporter = EXPORTERS[fmt]
    return exporter.write(lm, cfg, out, calib=calib, overwrite=overwrite, progress=progress)
