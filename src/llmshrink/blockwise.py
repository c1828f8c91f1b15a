"""One block-by-block driver over a decoder.

Capture what enters the first decoder block for a batch of calibration windows (hidden states
and the keyword arguments the model passes to each block: position embeddings, mask, ...; they
differ between blocks where the model mixes sliding-window and full-attention layers, or local
and global RoPE, as Gemma and Qwen with ``layer_types`` do), then walk the blocks one at a time:
the caller's ``visit(i, block, inputs)`` sees the block and its inputs and may change the block (quantize it, score it); the driver then runs the block,
as it is now, to produce the next block's inputs. Memory stays near one block plus activations.

Side effects (hooks, ``use_cache``, the capture's early exit) are scoped and always undone.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .models.arch import ArchSpec


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass at the first block."""


@dataclass
class BlockInputs:
    hidden: list[torch.Tensor]  # one [batch, seq, hidden] tensor per calibration batch
    kwargs: list[dict]  # the keyword arguments each batch's block receives (the block these inputs enter)
    # every block's keyword arguments ([block][batch]) where blocks receive different ones; None: all alike
    layers: list[list[dict]] | None = None

    def at(self, i: int, hidden: list[torch.Tensor] | None = None) -> BlockInputs:
        """These inputs (or ``hidden``) as block ``i`` receives them."""
        return BlockInputs(self.hidden if hidden is None else hidden,
                           self.layers[i] if self.layers is not None else self.kwargs, self.layers)

    def block_kwargs(self, b: int) -> list[dict]:
        """Batch ``b``'s keyword arguments for every block, by block index (a single dict, for every
        block, when all alike)."""
        return [k[b] for k in self.layers] if self.layers is not None else [self.kwargs[b]]


class _Recorder(torch.nn.Module):
    """Stands in for a decoder block during the capture: keeps the keyword arguments the model
    passes it and hands the hidden states on untouched (the block itself never runs); the last
    one ends the pass. Attribute reads fall through to the block (the model reads e.g. its
    ``attention_type`` to pick the mask)."""

    def __init__(self, block: torch.nn.Module, seen: list[dict], last: bool):
        super().__init__()
        object.__setattr__(self, "block", block)
        self.seen, self.last = seen, last

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if "block" not in self.__dict__:
                raise
            return getattr(self.__dict__["block"], name)

    def forward(self, hidden_states, *args, **kwargs):
        self.seen.append(kwargs)
        if self.last:
            raise _Captured
        return hidden_states


@contextlib.contextmanager
def no_cache(model: torch.nn.Module) -> Iterator[None]:
    cfg = getattr(model, "config", None)
    old = getattr(cfg, "use_cache", None)
    if cfg is not None:
        cfg.use_cache = False
    try:
        yield
    finally:
        if cfg is not None:
            cfg.use_cache = old


class Slab:
    """Per-batch tensors of one shape kept in one contiguous buffer (allocated at the first
    :meth:`keep`), not one allocation per batch: long-lived calibration activations interleaved
    with a forward pass's temporaries fragment the allocator's heap, and the process's resident
    memory then grows far past what it holds (~450 MiB over a quantization of the default model).
    A tensor whose shape does not match its slot is kept as it is. With ``path`` the buffer is
    that file, memory-mapped (CPU only): the kernel pages it out under memory pressure, for
    calibration sets whose activations do not fit in memory."""

    def __init__(self, rows: list[int], path: Path | None = None):
        self.rows, self.path = rows, path
        self.views: list[torch.Tensor] | None = None

    def keep(self, b: int, t: torch.Tensor) -> torch.Tensor:
        if self.views is None:
            shape = (sum(self.rows), *t.shape[1:])
            if self.path is not None and t.device.type == "cpu":
                self.path.unlink(missing_ok=True)
                buf = torch.from_file(str(self.path), shared=True, size=math.prod(shape), dtype=t.dtype).view(shape)
            else:
                buf = torch.empty(shape, dtype=t.dtype, device=t.device)
            self.views = list(buf.split(self.rows))
        v = self.views[b]
        if v.shape != t.shape or v.dtype != t.dtype or v.device != t.device:
            return t
        return v.copy_(t)


@torch.no_grad()
def capture_block_inputs(model: torch.nn.Module, arch: ArchSpec, batches: list[torch.Tensor],
                         store: Path | None = None) -> BlockInputs:
    """Run each batch of token ids through the model with every decoder block stood in by a
    :class:`_Recorder`, and keep what enters the first block (in one :class:`Slab` when the
    batches share a length; memory-mapped from the file ``store`` if given) and what keyword
    arguments each block receives (kept per block only where they differ)."""
    layers = arch.blocks(model)
    blocks = list(layers)
    seen: list[list[dict]] = [[] for _ in blocks]
    hidden = []
    same = len({ids.shape[1:] for ids in batches}) == 1
    slab = Slab([ids.shape[0] for ids in batches], store) if same else None

    def hook(_module, args, kw):
        h = args[0] if args else kw["hidden_states"]
        hidden.append(slab.keep(len(hidden), h) if slab is not None else h)

    device = next(model.parameters()).device
    handle = None
    try:
        for i, block in enumerate(blocks):
            layers[i] = _Recorder(block, seen[i], last=i == len(blocks) - 1)
        handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
        with no_cache(model):
            for ids in batches:
                with contextlib.suppress(_Captured):
                    model(input_ids=ids.to(device), use_cache=False)
    finally:
        if handle is not None:
            handle.remove()
        for i, block in enumerate(blocks):
            layers[i] = block
    kwargs = [[{k: v for k, v in kw.items() if k != "hidden_states"} for kw in per] for per in seen]
    alike = all(_same(kw, kwargs[0]) for kw in kwargs[1:])
    return BlockInputs(hidden, kwargs[0], None if alike else kwargs)


def _same(a: list[dict], b: list[dict]) -> bool:
    """Whether two blocks receive the very same keyword arguments (the same objects) in every batch."""
    return all(x.keys() == y.keys() and all(x[k] is y[k] for k in x) for x, y in zip(a, b, strict=True))


def run_block(block: torch.nn.Module, inputs: BlockInputs) -> list[torch.Tensor]:
    outs = []
    with torch.no_grad():
        for h, kw in zip(inputs.hidden, inputs.kwargs, strict=True):
            out = block(h, **kw)
            outs.append(out[0] if isinstance(out, tuple) else out)
    return outs


def run_block_seeing(block: torch.nn.Module, inputs: BlockInputs, names: Iterable[str],
                     see: Callable[[str, torch.Tensor], None]) -> list[torch.Tensor]:
    """:func:`run_block`, with ``see(name, x)`` called on the input ``x`` of each submodule of
    ``names`` as it runs (e.g. to accumulate statistics of a linear's inputs)."""
    hooks = [block.get_submodule(n).register_forward_pre_hook(lambda _m, args, n=n: see(n, args[0])) for n in names]
    try:
        return run_block(block, inputs)
    finally:
        for h in hooks:
            h.remove()


# A visit may return the block's outputs (as it computed them anyway) to spare the driver a pass.
Visit = Callable[[int, torch.nn.Module, BlockInputs], "list[torch.Tensor] | None"]
# Called before a block is first used (e.g. to read its weights from disk: ``models.lazy``).
Prepare = Callable[[int, torch.nn.Module], None]
# Called once the first block's inputs are captured (e.g. to free the embedding: ``models.lazy``).
Captured = Callable[[], None]


def walk_blocks(model: torch.nn.Module, arch: ArchSpec, batches: list[torch.Tensor], visit: Visit,
                *, blocks: range | None = None, through: int | None = None, prepare: Prepare | None = None,
                captured: Captured | None = None, store: Path | None = None, progress=None) -> BlockInputs:
    """Call ``visit`` on each block in ``blocks`` (default all) with its inputs, propagating the
    outputs of each block as changed by ``visit``. Stop after the last visited block or, given
    ``through``, run blocks up to ``through`` and return their outputs (e.g. the final hidden
    states, for the lm_head). ``store``: a file to keep the activations in, memory-mapped (see
    :class:`Slab`)."""
    layers = arch.blocks(model)
    todo = blocks if blocks is not None else range(len(layers))
    inputs = capture_block_inputs(model, arch, batches, store)
    if captured is not None:
        captured()
    end = through if through is not None else (max(todo) + 1 if len(todo) else 0)
    it = progress(range(end), desc="blocks", unit="block") if progress else range(end)
    for i in it:
        block = layers[i]
        if prepare is not None:
            prepare(i, block)
        inputs = inputs.at(i)
        outs = visit(i, block, inputs) if i in todo else None
        if i < end - 1 or through is not None:
            inputs = inputs.at(i + 1 if i + 1 < len(layers) else i, outs if outs is not None else run_block(block, inputs))
    return inputs
