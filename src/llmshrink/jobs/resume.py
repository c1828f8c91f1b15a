"""Resume points, kept beside a run's output (``.OUT.partial/``). A quantize or GGUF export run
keeps each finished block (packed tensors, or its GPTQ solutions) and the hidden states entering
the next block; block scoring keeps its finished rounds. A killed run continues
after its last finished block and ends byte-identical to an uninterrupted run: the next block
sees the very activations it would have seen, and the finished blocks are read back as written.

Each file appears atomically, the block's before the activations that count it as done, so a
kill at any moment leaves a consistent state. A state made with other settings is refused with
the difference named.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path

import torch

from ..config import settings_difference
from ..errors import UserError
from ..memory import release_freed
from ..models.arch import ArchSpec
from ..models.files import StoredTensor, stored_tensors, write_safetensors
from ..paths import atomic_file, read_record
from ..quant.driver import LayerRecord
from ..quant.gptq import QuantResult
from ..quant.qlinear import QuantLinear

log = logging.getLogger(__name__)


# QuantResult's tensors (kept per layer as ``NAME::FIELD``); its floats go in the metadata
_TENSORS = ("q", "scales", "zeros", "g_idx", "perm", "mins", "d", "dmin", "levels")


def state_dir(out: Path) -> Path:
    """Where a quantization into ``out`` keeps its resume point (beside the output, hidden)."""
    return out.parent / f".{out.name}.partial"


def _digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def open_state_dir(out: Path, settings: dict, *, discard_other: bool = False, what: str = "run") -> Path:
    """The resume folder beside ``out`` for a run of these ``settings``: made, or kept when it was
    made with the same settings; one made with others is refused with the difference named
    (``discard_other``: removed, the run starts over)."""
    folder = state_dir(out)
    record = folder / "settings.json"
    if folder.exists() and not record.is_file():  # killed before its first file appeared
        shutil.rmtree(folder)
    if folder.exists():
        rec = read_record(record)
        if rec.get("hash") != _digest(settings):
            if not discard_other:
                raise UserError(f"{folder} holds an interrupted {what} into {out} with other settings "
                                f"({settings_difference(rec.get('settings'), settings)}): run it again with "
                                "those settings to continue it, or pass --overwrite to start over")
            shutil.rmtree(folder)
    if not folder.exists():
        folder.mkdir()
        with atomic_file(record) as tmp:
            tmp.write_text(json.dumps({"hash": _digest(settings), "settings": settings}, indent=2, default=str) + "\n")
    return folder


class _State:
    """A resume point used as a context: removed when the run ends, or fails on bad input (a
    UserError: the run cannot continue under these settings); kept when it is interrupted."""

    folder: Path

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None or issubclass(kind, UserError):
            self.finish()

    def finish(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class RecordState(_State):
    """A resume point that is one JSON record (e.g. the finished rounds of block scoring)."""

    def __init__(self, out: Path, settings: dict, *, discard_other: bool = False, what: str = "run"):
        self.folder = open_state_dir(out, settings, discard_other=discard_other, what=what)
        path = self.folder / "progress.json"
        self.data = read_record(path) if path.is_file() else {}

    def save(self, data: dict) -> None:
        with atomic_file(self.folder / "progress.json") as tmp:
            tmp.write_text(json.dumps(data) + "\n")
        self.data = data


class BlockState(_State):
    """The resume point of one quantize run (see the module's doc); ``done`` blocks of the run's
    range are finished."""

    def __init__(self, folder: Path, arch: ArchSpec, done: int = 0, *, spill: range | None = None):
        self.folder, self.arch, self.done = folder, arch, done
        self.blocks = spill  # the run's block indices, given to spill finished packed blocks
        # packed tensors left in the block files (full names): the saver copies them from there
        self.spilled: dict[str, StoredTensor] = {}

    @classmethod
    def open(cls, out: Path, settings: dict, arch: ArchSpec, *, discard_other: bool = False,
             spill: range | None = None) -> BlockState:
        """The state beside ``out``: new, or continued when made with the same ``settings``; one
        made with others is refused (``discard_other``: removed, the run starts over). With
        ``spill`` (the run's block indices), each finished packed block's GPTQ tensors are freed
        from memory once its file is written, and read from there when the checkpoint is saved
        (:attr:`spilled`): memory does not grow with the blocks done."""
        state = cls(open_state_dir(out, settings, discard_other=discard_other), arch, spill=spill)
        hidden = state.folder / "hidden.safetensors"
        if hidden.is_file():
            state.done = int(_metadata(hidden).get("done", 0))
            log.info("resuming: %d blocks finished before, read from %s", state.done, state.folder)
        return state

    def _block(self, k: int) -> Path:
        return self.folder / f"block-{k:05d}.safetensors"

    def save(self, k: int, block: torch.nn.Module, outs: list[torch.Tensor], records: list[LayerRecord],
             results: dict[str, QuantResult]) -> None:
        """Keep the ``k``-th block of the run (its solutions, or the block packed) and what leaves
        it; then it counts as done."""
        if results:
            tensors = {f"{name}::{f}": t.contiguous() for name, res in results.items()
                       for f in _TENSORS if (t := getattr(res, f)) is not None}
            solved = {name: {"loss": res.loss, "damp": res.damp} for name, res in results.items()}
        else:
            tensors = {name: t.detach().contiguous() for name, t in block.state_dict().items()}
            solved = {}
        meta = {"records": json.dumps([dataclasses.asdict(r) for r in records]), "results": json.dumps(solved)}
        with atomic_file(self._block(k)) as tmp:
            write_safetensors(tmp, tensors, meta)
        with atomic_file(self.folder / "hidden.safetensors") as tmp:
            write_safetensors(tmp, {f"h{b}": t for b, t in enumerate(outs)}, {"done": str(k + 1)})
        self.done = k + 1
        if self.blocks is not None and not results:
            self._spill(k, block)

    def _spill(self, k: int, block: torch.nn.Module) -> None:
        """Free the packed layers' GPTQ tensors of the ``k``-th block (left on ``meta``), noting
        where its file holds them."""
        stored = stored_tensors(self._block(k))
        prefix = f"{self.arch.layers}.{self.blocks[k]}."
        for name, mod in block.named_modules():
            if isinstance(mod, QuantLinear):
                for leaf in QuantLinear.PACKED:
                    self.spilled[prefix + f"{name}.{leaf}"] = stored[f"{name}.{leaf}"]
                    mod._buffers[leaf] = torch.empty_like(mod._buffers[leaf], device="meta")
        release_freed()

    def restore(self, k: int, block: torch.nn.Module) -> tuple[list[LayerRecord], dict[str, QuantResult]]:
        """Put the ``k``-th finished block back as it was saved; its layers' records and solutions."""
        from safetensors.torch import load_file

        path = self._block(k)
        try:
            state = load_file(str(path))
            meta = _metadata(path)
            records, solved = json.loads(meta["records"]), json.loads(meta["results"])
        except (OSError, KeyError, ValueError) as exc:
            raise UserError(f"{path} is damaged ({type(exc).__name__}): delete {self.folder} to start over") from None
        records = [LayerRecord(**{**r, "shape": tuple(r["shape"])}) for r in records]
        if solved:
            return records, self._put_back_solutions(block, state, solved)
        for name in self.arch.linear_names:
            linear, scales = block.get_submodule(name), state[f"{name}.scales"]
            bits = state[f"{name}.qweight"].shape[0] * 32 // linear.in_features  # each layer's own width
            block.set_submodule(name, QuantLinear(linear.in_features, linear.out_features, bits,
                                                  scales.shape[0], bias=f"{name}.bias" in state, dtype=scales.dtype))
        block.load_state_dict(state, strict=True, assign=True)
        if self.blocks is not None:
            self._spill(k, block)
        return records, {}

    def _put_back_solutions(self, block: torch.nn.Module, state: dict, solved: dict) -> dict[str, QuantResult]:
        """Each solved layer's result, its weight set to the solution (as the solve left it)."""
        results = {}
        for full, info in solved.items():
            fields = {f: state.get(f"{full}::{f}") for f in _TENSORS}
            res = results[full] = QuantResult(**fields, loss=info["loss"], damp=info["damp"])
            local = full.split(".", self.arch.layers.count(".") + 2)[-1]
            mod = block.get_submodule(local)
            mod.weight.data = res.dequantize().to(mod.weight.dtype).reshape(mod.weight.shape)
        return results

    def hidden(self) -> list[torch.Tensor]:
        """What enters the first block not done yet."""
        from safetensors.torch import load_file

        saved = load_file(str(self.folder / "hidden.safetensors"))
        return [saved[f"h{b}"] for b in range(len(saved))]


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            return fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types on a damaged header
        raise UserError(f"{path} is damaged ({type(exc).__name__}): delete {path.parent} to start over") from None
