"""The quantize job behind ``llmshrink quantize``: calibrate, quantize chosen blocks, save."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..config import QuantConfig
from ..data.corpora import load_corpus
from ..data.windows import bos_id, sample_windows, tokenize_corpus
from ..errors import UserError
from ..memory import release_freed
from ..models.load import LoadedModel
from .api import QuantizeReport, quantize_model

log = logging.getLogger(__name__)


@dataclass
class CalibConfig:
    data: str = "shakespeare:calib"
    nsamples: int = 128
    seqlen: int = 512
    seed: int = 0
    batch_size: int = 8

    def __post_init__(self) -> None:
        for name in ("nsamples", "seqlen", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")


def parse_blocks(spec: str | None, n_layers: int) -> range:
    """``A:B`` (Python slice: ends optional, negative counts from the end) or ``N`` (block N alone) -> range, checked against the model."""
    if spec is None or spec in ("", ":", "all"):
        return range(n_layers)
    try:
        if ":" in spec:
            a, _, b = spec.partition(":")
            start, stop = int(a) if a else 0, int(b) if b else n_layers
            start, stop = (start + n_layers if start < 0 else start), (stop + n_layers if stop < 0 else stop)
            r = range(start, stop)
        else:
            r = range(int(spec), int(spec) + 1)
    except ValueError:
        raise UserError(f"bad block range {spec!r}: write A:B, e.g. 0:26 (or 0:-4: all but the last four)") from None
    if len(r) == 0 or r.start < 0 or r.stop > n_layers:
        raise UserError(f"block range {spec} is outside the model's {n_layers} blocks (0:{n_layers})")
    return r


def run_quantize(lm: LoadedModel, cfg: QuantConfig, calib: CalibConfig, out: Path, *, blocks: str | None = None,
                 lm_head: bool = False, progress=None) -> tuple[QuantizeReport, Path]:
    from ..export.hf import check_packable, save_quantized

    out = Path(out)
    if not out.parent.is_dir():
        raise UserError(f"the folder {out.parent} does not exist: create it or choose another --out")
    n_layers = len(lm.arch.blocks(lm.model))
    todo = parse_blocks(blocks, n_layers)
    check_packable(lm.model, lm.arch, todo, lm_head, cfg.bits)
    windows = None
    if cfg.method != "rtn":  # RTN rounds weights alone; no calibration pass
        stream = tokenize_corpus(load_corpus(calib.data), lm.tokenizer)
        windows = sample_windows(stream, calib.nsamples, calib.seqlen, seed=calib.seed,
                                 bos=bos_id(lm.tokenizer), name=f"calibration corpus {calib.data}")
        del stream
        release_freed()  # the tokenizer's transient memory, before the calibration pass's peak
        log.info("calibrating on %d x %d tokens of %s", *windows.shape, calib.data)
    log.info("quantizing blocks %d:%d with %s", todo.start, todo.stop, cfg.method)
    t0 = time.perf_counter()
    # Packed as solved; with a lazily loaded model, blocks are read from disk one at a time, and
    # the embedding is freed once the calibration inputs are captured (read back for saving).
    prepare = captured = None
    if lm.blocks is not None:
        prepare = lm.blocks.materialize
        if not lm_head:
            captured = partial(lm.blocks.drop, lm.model, [f"{lm.arch.embed}.weight"])
    try:
        report = quantize_model(lm.model, lm.arch, windows, cfg, blocks=todo, batch_size=calib.batch_size,
                                lm_head=lm_head, pack=True, prepare=prepare, captured=captured, progress=progress)
    finally:
        if lm.blocks is not None:
            lm.blocks.restore()
    if prepare is not None:  # blocks left out of --blocks are saved in full precision
        for i, block in enumerate(lm.arch.blocks(lm.model)):
            prepare(i, block)
    layers = "".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in report.layers)
    run = {"model": lm.name, "config": cfg.to_dict(),
           "calibration": dataclasses.asdict(calib) if windows is not None else None,
           "blocks": [todo.start, todo.stop], "lm_head": lm_head, "quantize_seconds": report.seconds}
    saved = save_quantized(lm.model, lm.tokenizer, report, out,
                           extra_files={"quantize_layers.jsonl": layers,
                                        "llmshrink_quantize.json": json.dumps(run, indent=2) + "\n"})
    log.info("quantized and saved in %.1f s -> %s", time.perf_counter() - t0, saved)
    return report, saved
