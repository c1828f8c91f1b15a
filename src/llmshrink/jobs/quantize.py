"""The quantize job behind ``llmshrink quantize``: calibrate, quantize chosen blocks, write the
Hugging Face GPTQ checkpoint."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import ClassVar

from ..config import Config, Part, command_line, save_dtype_field
from ..data.calib import CalibConfig, calibration_windows
from ..errors import UserError
from ..exporters.gptq_compat import compatibility_notes, resolve_group_size
from ..exporters.hf import check_packable, release_dtype, save_quantized
from ..memory import short_of
from ..models.arch import block_range, check_range_syntax
from ..models.load import LoadedModel, read_config
from ..paths import claim_output
from ..quant.config import QuantConfig
from ..quant.driver import QuantizeReport, quantize_model
from .card import CARD, card_file
from .resume import BlockState

log = logging.getLogger(__name__)


@dataclass
class QuantizeScope(Config):
    """Which parts of the model a quantize job quantizes."""

    kind: ClassVar[str] = "quantize"
    blocks: str | None = field(default=None, metadata={"help": "blocks to quantize, A:B (a Python slice: 0:26, "
                                                               "0:-4; default all)"})
    lm_head: bool = field(default=False, metadata={"help": "quantize the lm_head too (untied from the "
                                                           "embeddings; default: keep it full precision)"})
    save_dtype: str = save_dtype_field()
    activations: str = field(default="memory", metadata={
        "help": "where the calibration activations live: memory, or disk (a file beside the output, "
                "memory-mapped: for calibration sets whose activations do not fit in memory)",
        "choices": ("memory", "disk")})

    def __post_init__(self) -> None:
        self.one_of("activations", ("memory", "disk"), "activations store")
        self.check(self.blocks is None or isinstance(self.blocks, str), "blocks",
                   f"must be a range A:B written as a string, got {self.blocks!r}")
        check_range_syntax(self.blocks)


# The settings of a quantize job, as flags of ``llmshrink quantize`` and fields of a recipe's quantize stage.
PARTS = (Part("quant", QuantConfig), Part("scope", QuantizeScope), Part("calib", CalibConfig, nested=True))


def run_quantize(lm: LoadedModel, cfg: QuantConfig, calib: CalibConfig, out: Path, *, blocks: str | None = None,
                 lm_head: bool = False, save_dtype: str = "auto", activations: str = "memory", overwrite: bool = False,
                 progress=None) -> tuple[QuantizeReport, Path]:
    method = (read_config(lm.path).get("quantization_config") or {}).get("quant_method")
    if method is not None:
        raise UserError(f"{lm.path} is already {method}-quantized: quantize the original model instead")
    out = claim_output(out, inputs=lm.sources, overwrite=overwrite, need_bytes=lm.size_on_disk)
    if cfg.method != "rtn":
        check_activations(lm, calib, activations, copies=2 if cfg.drifts else 1)
    n_layers = len(lm.arch.blocks(lm.model))
    todo = block_range(blocks, n_layers)
    cfg = _settle_group_size(lm, cfg, todo, lm_head)
    check_packable(lm.model, lm.arch, todo, lm_head, cfg.bits)
    # RTN rounds weights alone; no calibration pass
    windows = calibration_windows(lm.tokenizer, calib) if cfg.method != "rtn" else None
    log.info("quantizing blocks %d:%d with %s", todo.start, todo.stop, cfg.method)
    t0 = time.perf_counter()
    done = {"config": cfg.to_dict(), "calibration": dataclasses.asdict(calib) if windows is not None else None,
            "blocks": [todo.start, todo.stop], "lm_head": lm_head}
    # each finished block is kept beside the output: a killed run continues from there
    # ... and, when blocks are read from disk one at a time, leaves memory once written: the
    # checkpoint is assembled from those files (the model in memory is then not whole)
    with BlockState.open(out, {**lm.identity, **done}, lm.arch, cfg.bits, discard_other=overwrite,
                         spill=todo if lm.blocks is not None else None) as state:
        store = state.folder / "activations.bin" if activations == "disk" else None
        report = _quantize_blocks(lm, cfg, windows, calib, todo, lm_head, state, store, progress)
        layers = "".join(json.dumps(r.row()) + "\n" for r in report.layers)
        command = command_line("quantize", lm.name, out, PARTS, {
            "quant": cfg, "scope": QuantizeScope(blocks=blocks, lm_head=lm_head, save_dtype=save_dtype,
                                                 activations=activations),
            "calib": calib if windows is not None else None})
        run = {"model": lm.name, **done, "quantize_seconds": report.seconds, "command": command}
        saved = save_quantized(lm.model, lm.tokenizer, report, out, dtype=release_dtype(save_dtype, lm.path, True),
                               extra_files={"quantize_layers.jsonl": layers,
                                            "llmshrink_quantize.json": json.dumps(run, indent=2) + "\n",
                                            CARD: card_file(out)}, spilled=state.spilled)
    log.info("quantized and saved in %.1f s -> %s", time.perf_counter() - t0, saved)
    return report, saved


def check_activations(lm: LoadedModel, calib: CalibConfig, activations: str, copies: int = 1) -> None:
    """Refuse, before any pass, calibration activations (one hidden state per calibration token,
    in the model's dtype; ``copies``: 2 where the original model's are kept too, GPTAQ) that would
    take more than half the free memory, unless they go to disk (the quantized model's only)."""
    p = next(p for p in lm.model.parameters() if not p.is_meta)
    need = copies * calib.nsamples * calib.seqlen * lm.model.config.hidden_size * p.element_size()
    free = short_of(need, str(p.device)) if activations == "memory" else None
    if free is not None:
        raise UserError(f"the calibration activations ({copies} x {calib.nsamples} x {calib.seqlen} tokens x hidden "
                        f"{lm.model.config.hidden_size}) need {need / 2**30:.1f} GiB, more than half the "
                        f"{free / 2**30:.1f} GiB free: pass --activations disk (memory-mapped beside the output) "
                        "or fewer --nsamples")


def _settle_group_size(lm: LoadedModel, cfg: QuantConfig, todo: range, lm_head: bool) -> QuantConfig:
    """``group_size: auto`` made concrete, and what the settings rule out said up front."""
    layers = lm.arch.blocks(lm.model)
    widths = {f"{lm.arch.layers}.{i}.{n}": layers[i].get_submodule(n).in_features
              for i in todo for n in lm.arch.linear_names}
    if lm_head:
        widths[lm.arch.lm_head] = lm.model.get_submodule(lm.arch.lm_head).in_features
    resolved = resolve_group_size(cfg, widths)
    if resolved is not cfg:
        log.info("group size auto: %d (divides every quantized layer's width)", resolved.group_size)
    for note in compatibility_notes(resolved, widths):
        log.warning("%s", note)
    return resolved


def _quantize_blocks(lm: LoadedModel, cfg: QuantConfig, windows, calib: CalibConfig, todo: range, lm_head: bool,
                     state: BlockState, store: Path | None, progress) -> QuantizeReport:
    """The driver over ``lm``, packed as solved; with a lazily loaded model, blocks are read from
    disk one at a time, and the embedding (and an untied lm_head not being quantized) is freed once
    the calibration inputs are captured (read back for saving); blocks outside ``todo`` are read back in full precision at the end."""
    prepare = captured = None
    if lm.blocks is not None:
        prepare = lm.blocks.materialize
        if not lm_head:  # nothing reads the embedding (nor an untied lm_head) again until saving
            head, emb = lm.model.get_submodule(lm.arch.lm_head), lm.model.get_submodule(lm.arch.embed)
            keys = [f"{lm.arch.embed}.weight"] + ([f"{lm.arch.lm_head}.weight"] if head.weight is not emb.weight else [])
            captured = partial(lm.blocks.drop, lm.model, keys)
    try:
        report = quantize_model(lm.model, lm.arch, windows, cfg, blocks=todo, batch_size=calib.batch_size,
                                lm_head=lm_head, pack=True, prepare=prepare, captured=captured, resume=state,
                                store=store, progress=progress)
    finally:
        if lm.blocks is not None:
            lm.blocks.restore()
    if prepare is not None:
        for i, block in enumerate(lm.arch.blocks(lm.model)):
            prepare(i, block)
    return report
