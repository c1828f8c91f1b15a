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
from ..models.lazy import LazyBlocks
from ..models.load import LoadedModel, read_config
from ..paths import atomic_file, claim_output, read_record
from ..quant.config import QuantConfig
from ..quant.driver import QuantizeReport, quantize_model
from ..quant.mix import Allocation, MixConfig, fisher_errors, plan_bits
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
PARTS = (Part("quant", QuantConfig), Part("mix", MixConfig), Part("scope", QuantizeScope),
         Part("calib", CalibConfig, nested=True))


def run_quantize(lm: LoadedModel, cfg: QuantConfig, calib: CalibConfig, out: Path, *, blocks: str | None = None,
                 lm_head: bool = False, save_dtype: str = "auto", activations: str = "memory",
                 mix: MixConfig | None = None, overwrite: bool = False, progress=None) -> tuple[QuantizeReport, Path]:
    """Quantize ``lm``'s ``blocks`` (and ``lm_head``) and write the GPTQ checkpoint to ``out``;
    with ``mix.target_bpw``, each block linear at the width :mod:`llmshrink.quant.mix` gives it."""
    method = (read_config(lm.path).get("quantization_config") or {}).get("quant_method")
    if method is not None:
        raise UserError(f"{lm.path} is already {method}-quantized: quantize the original model instead")
    mixing = mix is not None and mix.target_bpw is not None
    out = claim_output(out, inputs=lm.sources, overwrite=overwrite, need_bytes=lm.size_on_disk)
    if cfg.method != "rtn" or mixing:
        check_activations(lm, calib, activations, copies=2 if cfg.drifts else 1)
    n_layers = len(lm.arch.blocks(lm.model))
    todo = block_range(blocks, n_layers)
    cfg = _settle_group_size(lm, cfg, todo, lm_head)
    if not mixing:
        check_packable(lm.model, lm.arch, todo, lm_head, cfg.bits)
    # RTN rounds weights alone; no calibration pass (but a mix measures each layer on calibration)
    windows = calibration_windows(lm.tokenizer, calib) if cfg.method != "rtn" or mixing else None
    log.info("quantizing blocks %d:%d with %s", todo.start, todo.stop, cfg.method)
    t0 = time.perf_counter()
    done = {"config": cfg.to_dict(), "calibration": dataclasses.asdict(calib) if windows is not None else None,
            "blocks": [todo.start, todo.stop], "lm_head": lm_head, **({"mix": mix.to_dict()} if mixing else {})}
    # each finished block is kept beside the output: a killed run continues from there
    # ... and, when blocks are read from disk one at a time, leaves memory once written: the
    # checkpoint is assembled from those files (the model in memory is then not whole)
    with BlockState.open(out, {**lm.identity, **done}, lm.arch, discard_other=overwrite,
                         spill=todo if lm.blocks is not None else None) as state:
        plan = _plan_widths(lm, cfg, mix, windows, todo, state.folder, progress) if mixing else None
        if plan is not None:
            cfg = dataclasses.replace(cfg, bits=max(set(plan.bits.values()), key=list(plan.bits.values()).count))
            check_packable(lm.model, lm.arch, todo, lm_head, cfg.bits, widths=plan.bits)
        store = state.folder / "activations.bin" if activations == "disk" else None
        report = _quantize_blocks(lm, cfg, windows if cfg.method != "rtn" else None, calib, todo, lm_head, state,
                                  store, progress, bits=plan.bits if plan is not None else None)
        layers = "".join(json.dumps(r.row()) + "\n" for r in report.layers)
        command = command_line("quantize", lm.name, out, PARTS, {
            "quant": cfg if plan is None else dataclasses.replace(cfg, bits=done["config"]["bits"]),
            "mix": mix if mixing else None,
            "scope": QuantizeScope(blocks=blocks, lm_head=lm_head, save_dtype=save_dtype, activations=activations),
            "calib": calib if windows is not None else None})
        run = {"model": lm.name, **done, "quantize_seconds": report.seconds, "command": command,
               **({"mixed_precision": {"bpw": plan.bpw, "widths": _count(plan.bits)}} if plan is not None else {})}
        saved = save_quantized(lm.model, lm.tokenizer, report, out, dtype=release_dtype(save_dtype, lm.path, True),
                               extra_files={"quantize_layers.jsonl": layers,
                                            "llmshrink_quantize.json": json.dumps(run, indent=2) + "\n",
                                            CARD: card_file(out)}, spilled=state.spilled)
    log.info("quantized and saved in %.1f s -> %s", time.perf_counter() - t0, saved)
    return report, saved


def _count(bits: dict[str, int]) -> dict[str, int]:
    """How many layers got each width."""
    values = list(bits.values())
    return {str(b): values.count(b) for b in sorted(set(values))}


def _plan_widths(lm: LoadedModel, cfg: QuantConfig, mix: MixConfig, windows, todo: range, folder: Path,
                 progress) -> Allocation:
    """Each block linear's width under ``mix.target_bpw``, from its Fisher-weighted rounding error
    on the calibration windows (the whole model in memory for the gradients; blocks read from
    disk are freed again after), or read back from ``folder`` when a killed run made it."""
    saved = folder / "widths.json"
    if saved.is_file():
        return Allocation.from_dict(read_record(saved))
    layers = lm.arch.blocks(lm.model)
    p = next(p for p in lm.model.parameters() if not p.is_meta)
    need = 3 * sum(x.numel() for x in lm.model.parameters()) * p.element_size()  # weights, gradients, Fisher
    free = short_of(need, str(p.device))
    if free is not None:
        raise UserError(f"--target-bpw measures each layer on the whole model's gradients: {need / 2**30:.1f} GiB, "
                        f"more than half the {free / 2**30:.1f} GiB free: quantize at one width (--bits), or on a "
                        "machine with more memory")
    names = [f"{lm.arch.layers}.{i}.{n}" for i in todo for n in lm.arch.linear_names]
    try:
        if lm.blocks is not None:
            for i, block in enumerate(layers):
                lm.blocks.materialize(i, block)
        errors = fisher_errors(lm.model, names, windows, cfg, mix.choices, progress=progress)
    finally:
        if lm.blocks is not None:  # the quantize pass reads each block again when it reaches it
            for block in layers:
                LazyBlocks.release(block)
    shapes = {n: tuple(lm.model.get_submodule(n).weight.shape) for n in names}
    plan = plan_bits(shapes, errors, cfg, mix)
    log.info("mixed precision: %.3f bits per weight, widths %s", plan.bpw, _count(plan.bits))
    with atomic_file(saved) as tmp:
        tmp.write_text(json.dumps(plan.to_dict()) + "\n")
    return plan


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
                     state: BlockState, store: Path | None, progress, bits: dict[str, int] | None = None
                     ) -> QuantizeReport:
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
        report = quantize_model(lm.model, lm.arch, windows, cfg, bits=bits, blocks=todo, batch_size=calib.batch_size,
                                lm_head=lm_head, pack=True, prepare=prepare, captured=captured, resume=state,
                                store=store, progress=progress)
    finally:
        if lm.blocks is not None:
            lm.blocks.restore()
    if prepare is not None:
        for i, block in enumerate(lm.arch.blocks(lm.model)):
            prepare(i, block)
    return report
