"""The GGUF ladder behind ``llmshrink export MODEL --ladder TYPES|all --out DIR``: every file of a
GGUF release from one model, and a table of them (type, who made it, size, bits per weight,
perplexity through llama.cpp, increase over F16) as ``ladder.md`` and ``ladder.json``.

Files GPTQ can target are solved by llmshrink (each from a fresh copy of the model); the others
(IQ1/IQ2/IQ3 lattice types) are made by llama.cpp's quantizer from the F16 file, fed the
importance matrix llmshrink computes (written beside them as ``imatrix.gguf``). One set of
calibration windows serves every solve and the importance matrix.

Resumable per file: a file that is finished (it appears atomically) and its row are kept; a run
on a folder made from other settings (model, solve, calibration, evaluation) is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..config import Config, settings_difference
from ..data.calib import CalibConfig, calibration_windows
from ..errors import UserError
from ..eval.config import EvalConfig
from ..exporters.config import FILE_TYPES, GGUFConfig
from ..exporters.gguf import _tensor_names
from ..exporters.llamacpp_quant import LLAMACPP_TYPES, llama_quantize, read_imatrix, write_imatrix
from ..models.load import LoadedModel
from ..paths import atomic_file, claim_output, read_record
from ..quant.importance import input_importance
from .gguf_export import export_gguf
from .ladder_card import ladder_table, render_ladder_card

log = logging.getLogger(__name__)

# A release's ladder, most bits first (F16 heads it: the reference every row is measured against).
LADDER_ALL = ("f16", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_1", "q5_0", "q4_k_m", "q4_k_s", "q4_1", "q4_0",
              "iq4_nl", "iq4_xs", "q3_k_l", "q3_k_m", "q3_k_s", "iq3_m", "iq3_s", "iq3_xs", "iq3_xxs", "q2_k",
              "iq2_m", "iq2_s", "iq2_xs", "iq2_xxs", "iq1_m", "iq1_s")
LADDER_TYPES = (*FILE_TYPES, *LLAMACPP_TYPES)


@dataclass
class LadderConfig(Config):
    """The GGUF ladder: which files, and what scores them."""

    kind: ClassVar[str] = "export"
    ladder: tuple[str, ...] = field(default=(), metadata={
        "help": "write a GGUF file of each of these types into the --out folder, with a table of them "
                "(comma-separated, or all: " + ",".join(LADDER_ALL) + ")"})
    eval_data: str | None = field(default="shakespeare:eval", metadata={
        "help": "corpus each ladder file is scored on through llama.cpp (none: sizes only)"})
    eval_seqlen: int = field(default=512, metadata={"help": "tokens per window of the ladder's scoring"})
    eval_max_tokens: int | None = field(default=None, metadata={"help": "score only the first N tokens"})

    def __post_init__(self) -> None:
        types = tuple(str(t).lower() for t in self.ladder)
        if types == ("all",):
            types = LADDER_ALL
        for t in types:
            self.check(t in LADDER_TYPES, "ladder", f"unknown GGUF type {t!r}: use all or some of "
                                                    f"{', '.join(LADDER_TYPES)}")
        self.check(len(set(types)) == len(types), "ladder", "a type is named twice")
        self.ladder = types
        if self.eval_data is not None and str(self.eval_data).lower() in ("", "none"):
            self.eval_data = None
        self.positive("eval_max_tokens", allow_none=True)
        self.positive("eval_seqlen")

    @property
    def types(self) -> tuple[str, ...]:
        """The files to write, F16 first (the reference of every row), in the order given."""
        return ("f16", *(t for t in self.ladder if t != "f16"))

    def eval_config(self) -> EvalConfig | None:
        return None if self.eval_data is None else EvalConfig(data=self.eval_data, seqlen=self.eval_seqlen,
                                                                 max_tokens=self.eval_max_tokens)


@dataclass
class LadderReport:
    out: Path
    rows: dict[str, dict]  # type -> row (in ladder order)
    table: str  # Markdown


def _made_by(t: str, gcfg: GGUFConfig) -> str:
    if t in LLAMACPP_TYPES:
        return "llama.cpp quantizer + llmshrink imatrix"
    if GGUFConfig(type=t).quant_config() is None:
        return "llmshrink (float)"
    return f"llmshrink {gcfg.method}"


def _made_from_packed(rep) -> str | None:
    """How a file of a model with packed layers was made (None for a plain model's)."""
    if not (rep.carried or rep.requantized):
        return None
    parts = [f"{len(rep.carried)} packed layers carried exactly"] if rep.carried else []
    parts += [f"{len(rep.requantized)} packed layers rounded again"] if rep.requantized else []
    parts += [f"{len(rep.solved)} float layers solved"] if rep.solved else []
    return "llmshrink: " + ", ".join(parts)


def _settings(lm: LoadedModel, gcfg: GGUFConfig, calib: CalibConfig, ecfg: EvalConfig | None) -> dict:
    solve = {k: v for k, v in gcfg.to_dict().items() if k != "type"}
    return {"model": lm.name, "gguf": solve, "calib": calib.to_dict(), "eval": ecfg.to_dict() if ecfg else None}


def _open_folder(out: Path, settings: dict, sources: tuple[Path, ...]) -> dict:
    """The ladder record of ``out`` (new or resumed); refuse a folder from other settings."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    claim_output(out, inputs=sources, resumes=True)
    record = out / "ladder.json"
    if record.is_file():
        rec = read_record(record)
        if rec.get("hash") != digest:
            raise UserError(f"{out} holds a ladder made with other settings ("
                            f"{settings_difference(rec.get('settings'), settings)}): use another --out, or delete "
                            f"{out} to start over")
        log.info("resuming the ladder in %s (%d files done)", out, len(rec.get("rows", {})))
        return rec
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not a ladder folder: choose a new --out folder")
    out.mkdir(exist_ok=True)
    return {"hash": digest, "settings": settings, "rows": {}}


def _save(out: Path, rec: dict, table: str) -> None:
    for name, text in (("ladder.json", json.dumps(rec, indent=2) + "\n"), ("ladder.md", table + "\n"),
                       ("README.md", render_ladder_card(rec, rec.get("name") or out.name))):
        with atomic_file(out / name) as tmp:
            tmp.write_text(text)


def _file_name(name: str, t: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(name)).name.removesuffix(".gguf")).strip("-") or "model"
    return f"{stem}-{t.upper()}.gguf"


def _imatrix(lm: LoadedModel, windows, calib: CalibConfig, path: Path, progress) -> dict:
    """The importance matrix ({GGUF tensor name: mean x² per column}), computed once (``path``)
    and read back on resume."""
    if not path.is_file():
        stats = input_importance(lm.model, lm.arch, windows, batch_size=calib.batch_size, progress=progress)
        gguf_name = _tensor_names(lm)
        write_imatrix(path, {gguf_name(f"{n}.weight"): (m.numpy(), rows) for n, (m, rows) in stats.items()},
                      dataset=calib.data, chunks=len(windows), chunk_size=calib.seqlen)
    return {name: mean for name, (mean, _rows) in read_imatrix(path).items()}


def _score(path: Path, ecfg: EvalConfig) -> dict:
    from ..eval.llamacpp import load_llamacpp
    from ..eval.run import evaluate_perplexity

    r = evaluate_perplexity(load_llamacpp(path, n_ctx=ecfg.seqlen), ecfg)
    return {"perplexity": r["perplexity"], "tokens": r["tokens"], "eval_seconds": r["eval_seconds"]}


class _Fresh:
    """The model as loaded: loaded again after a solve has rewritten its weights."""

    def __init__(self, lm: LoadedModel, load: Callable[[], LoadedModel]) -> None:
        self.lm, self.load, self.dirty = lm, load, False

    def get(self) -> LoadedModel:
        if self.dirty:
            self.lm, self.dirty = None, False
            self.lm = self.load()
        return self.lm


def run_ladder(lm: LoadedModel, load: Callable[[], LoadedModel], gcfg: GGUFConfig, ladder: LadderConfig,
               out: Path, calib: CalibConfig, *, progress=None, command: str | None = None,
               name: str | None = None) -> LadderReport:
    """Write every file of ``ladder`` into the folder ``out`` (resuming one made with the same
    settings), each scored through llama.cpp on ``ladder.eval_data``, starting from ``lm``;
    ``load`` gives a fresh copy of the model (a GPTQ solve rewrites the weights it solves).
    Files are called ``NAME-TYPE.gguf`` (``name`` default: the model's)."""
    out = Path(out)
    model = _Fresh(lm, load)
    ecfg = ladder.eval_config()
    rec = _open_folder(out, _settings(lm, gcfg, calib, ecfg), lm.sources)
    if command:
        rec["command"] = command  # the card's reproduce line (not part of the settings' hash)
    if name:
        rec["name"] = name  # the release's name: its files' and card's (not part of the hash either)
    stem = rec.get("name") or lm.name
    for stale in out.glob(".*.part"):  # what a killed run was writing: never a finished file
        stale.unlink()
    params, windows, imatrix, types = lm.num_parameters, None, None, ladder.types
    for t in progress(types, desc="ladder", unit="file") if progress else types:
        path = out / _file_name(stem, t)
        if t in rec["rows"] and path.is_file():
            continue
        t0 = time.perf_counter()
        made_by = _made_by(t, gcfg)
        if not path.is_file():
            if windows is None and t != "f16" and (t in LLAMACPP_TYPES or gcfg.method != "rtn"):
                windows = calibration_windows(lm.tokenizer, calib)  # one set for every solve and the imatrix
            if t in LLAMACPP_TYPES:
                if imatrix is None:  # one matrix for every llama.cpp-made file
                    imatrix = _imatrix(model.get(), windows, calib, out / "imatrix.gguf", progress)
                llama_quantize(out / _file_name(stem, "f16"), path, t, imatrix)
            else:
                cfg = GGUFConfig(**{**gcfg.to_dict(), "type": t})
                rep = export_gguf(model.get(), cfg, path, calib=calib, progress=progress, windows=windows,
                                  overwrite=True)
                model.dirty |= cfg.quant_config() is not None  # the solve rewrote the weights
                made_by = _made_from_packed(rep) or made_by
        size = path.stat().st_size
        row = {"file": path.name, "made_by": made_by, "size": size, "bits_per_weight": 8 * size / params,
               "seconds": time.perf_counter() - t0}
        if ecfg is not None:
            row.update(_score(path, ecfg))
        rec["rows"][t] = row
        rec["rows"] = {k: rec["rows"][k] for k in types if k in rec["rows"]} | {
            k: v for k, v in rec["rows"].items() if k not in types}
        _save(out, rec, ladder_table(rec))
        log.info("ladder: %s %s (%.1f MB)", t, path.name, size / 1e6)
    return LadderReport(out, rec["rows"], ladder_table(rec))
