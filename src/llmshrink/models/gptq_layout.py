"""How GPTQ readers other than transformers name an architecture's modules, as data.

llmshrink writes GPTQ checkpoints under the names of the architecture's own checkpoints on disk
(what transformers, vLLM and llmshrink read). GPTQModel builds some architectures otherwise at
run time and looks for its own names: Mixtral's experts as ``mlp.experts.E.{gate,up,down}_proj``
(not ``block_sparse_moe.experts.E.{w1,w3,w2}``), Phi-3's ``gate_up_proj`` as two layers
``gate_proj`` and ``up_proj``. A :class:`Layout` renames modules and splits fused ones along their
outputs, exactly (packed codes, scales and zero points are sliced, never re-quantized), and reads
such a checkpoint back the other way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import UserError

# Tensors of a packed layer stored [.., out] (the output is their last dimension), and packed along it.
_OUT_LAST = ("qweight", "scales")
_PACKED_OUT = ("qzeros",)


def _pattern(path: str) -> str:
    """A block-local dotted path (``*`` for an expert's index) as a regex over full tensor names."""
    return r"^(.*\.\d+\.)" + re.escape(path).replace(r"\*", r"(\d+)") + r"((?:\.[^.]+)*)$"


def _replace(path: str) -> str:
    """The replacement for a match of :func:`_pattern`: the block prefix, ``path`` with each ``*``
    the matched index, the tensor's suffix."""
    parts = path.split("*")
    body = "".join(p + rf"\g<{i + 2}>" for i, p in enumerate(parts[:-1])) + parts[-1]
    return r"\g<1>" + body + rf"\g<{len(parts) + 1}>"


@dataclass(frozen=True)
class Layout:
    """Renames of block-local module paths (ours on disk, theirs; ``*`` matches an expert's index;
    a name takes the first rule that matches it), and fused modules split into equal output slices
    (ours, theirs in output order)."""

    renames: tuple[tuple[str, str], ...] = ()
    splits: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def name(self, name: str) -> list[str]:
        """A full module or tensor name (as on disk in llmshrink's layout) in this layout: one name,
        or the parts of a split module."""
        name = _rename(name, self.renames)
        for fused, parts in self.splits:
            m = re.match(_pattern(fused), name)
            if m:
                return [m.group(1) + p + m.group(m.lastindex) for p in parts]
        return [name]

    def write(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state`` (one shard, llmshrink's names on disk) in this layout."""
        out: dict[str, torch.Tensor] = {}
        for key, t in state.items():
            names = self.name(key)
            if len(names) == 1:
                out[names[0]] = t
                continue
            for part, piece in zip(names, _split(key, t, len(names)), strict=True):
                out[part] = piece
        return out

    def read(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state`` (a whole checkpoint in this layout) in llmshrink's names on disk."""
        out = dict(state)
        for fused, parts in self.splits:
            first = re.compile(_pattern(parts[0]))
            for key in [k for k in out if first.match(k)]:
                m = first.match(key)
                names = [m.group(1) + p + m.group(m.lastindex) for p in parts]
                if not all(n in out for n in names):
                    raise UserError(f"{key} has no {names[1:]} beside it: the checkpoint is incomplete")
                pieces = [out.pop(n) for n in names]
                out[m.group(1) + fused + m.group(m.lastindex)] = _join(key, pieces)
        back = tuple((theirs, ours) for ours, theirs in self.renames)
        return {_rename(k, back): v for k, v in out.items()}

    def holds(self, keys) -> bool:
        """Whether tensor names ``keys`` are in this layout (they name one of its own modules)."""
        theirs = [re.compile(_pattern(t)) for _, t in self.renames] + [
            re.compile(_pattern(p)) for _, parts in self.splits for p in parts]
        return any(p.match(k) for k in keys for p in theirs)


def _rename(name: str, renames: tuple[tuple[str, str], ...]) -> str:
    """``name`` renamed by the first rule whose source matches it (the rules' order tells the more
    particular ones first, and so reads back in the same order)."""
    for src, dst in renames:
        renamed, n = re.subn(_pattern(src), _replace(dst), name)
        if n:
            return renamed
    return name


def _kind(key: str) -> str:
    return key.rpartition(".")[2]


def _out_dim(kind: str) -> int:
    """The dimension of a tensor of this kind that runs over the layer's outputs."""
    return -1 if kind in _OUT_LAST + _PACKED_OUT else 0


def _split(key: str, t: torch.Tensor, n: int) -> list[torch.Tensor]:
    kind = _kind(key)
    if kind == "g_idx":  # the input's groups: the same for every slice of the outputs
        return [t.clone() for _ in range(n)]
    dim = _out_dim(kind)
    # packed zero points split on whole words exactly when their outputs do (3-bit ones fill 3
    # words per 32 outputs: half of a whole number of words is then a whole number of runs)
    if t.shape[dim] % n:
        raise UserError(f"{key} ({tuple(t.shape)}) does not split into {n} equal parts along its outputs: "
                        "export with --layout transformers")
    return [p.contiguous() for p in t.chunk(n, dim=dim)]


def _join(key: str, pieces: list[torch.Tensor]) -> torch.Tensor:
    kind = _kind(key)
    if kind == "g_idx":
        if any(not torch.equal(p, pieces[0]) for p in pieces[1:]):
            raise UserError(f"{key}: the parts of one fused layer have different g_idx: llmshrink cannot fuse them")
        return pieces[0]
    return torch.cat(pieces, dim=_out_dim(kind))


# GPTQModel (7.6, under transformers 5): the names its own module trees look for.
GPTQMODEL: dict[str, Layout] = {
    "mixtral": Layout(renames=(("block_sparse_moe.experts.*.w1", "mlp.experts.*.gate_proj"),
                               ("block_sparse_moe.experts.*.w3", "mlp.experts.*.up_proj"),
                               ("block_sparse_moe.experts.*.w2", "mlp.experts.*.down_proj"),
                               ("block_sparse_moe", "mlp"))),
    "phi3": Layout(splits=(("mlp.gate_up_proj", ("mlp.gate_proj", "mlp.up_proj")),)),
}

# --layout NAME: the layout of each architecture (absent: llmshrink's own names serve)
LAYOUTS: dict[str, dict[str, Layout]] = {"transformers": {}, "gptqmodel": GPTQMODEL}


def layout_for(name: str, model_type: str) -> Layout | None:
    return LAYOUTS[name].get(model_type)


def read_layout(model_type: str, keys) -> Layout | None:
    """The other layout a checkpoint of ``model_type`` with tensor names ``keys`` is written in, if any."""
    found = (layouts.get(model_type) for layouts in LAYOUTS.values())
    return next((layout for layout in found if layout is not None and layout.holds(keys)), None)
