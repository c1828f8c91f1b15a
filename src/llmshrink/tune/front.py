"""What the trainable tail reads: the frozen front's output for each training batch (and the
teacher's final hidden states), cached once or computed per batch.

The front never changes during tail fine-tuning, so by default its output for every batch is
computed once by the block-wise driver and kept (:class:`CachedFront`). At seed scale (70k
conversations through the 53 packed blocks of a 30B model) that cache is hundreds of GB:
:class:`StreamedFront` runs the front for one batch each time the tail needs it (the packed
layers through their own kernels, nothing dequantized at once), and the teacher the same way.
:func:`choose_front` picks streaming when the cache would not fit in memory, and says so.
"""

from __future__ import annotations

import logging

import torch

from ..blockwise import BlockInputs, walk_blocks
from ..errors import UserError
from ..memory import short_of
from ..models.load import LoadedModel
from ..quant.qlinear import dequantized
from .config import FRONTS

log = logging.getLogger(__name__)



@torch.no_grad()
def cache_inputs(lm: LoadedModel, ids: list[torch.Tensor], through: int, *, final_norm: bool = False,
                 progress=None) -> BlockInputs:
    """What enters block ``through`` for every batch of token ids (with ``final_norm``: the
    normed output of the last block), computed once by the block-wise driver."""
    if not ids:
        return BlockInputs([], [])
    with dequantized(lm.model):  # each frozen packed layer dequantized once, not once per batch
        inputs = walk_blocks(lm.model, lm.arch, ids, lambda *a: None, blocks=range(0), through=through,
                             progress=progress)
    if final_norm:
        norm = lm.model.get_submodule(lm.arch.norm)
        inputs = BlockInputs([norm(h) for h in inputs.hidden], inputs.kwargs, inputs.layers)
    return inputs


class CachedFront:
    """The front's outputs for the batches ``wanted`` (default all), computed at once."""

    def __init__(self, lm: LoadedModel, ids: list[torch.Tensor], through: int, *, final_norm: bool = False,
                 wanted: list[int] | None = None, progress=None):
        self.slot = {j: k for k, j in enumerate(wanted if wanted is not None else range(len(ids)))}
        self.inputs = cache_inputs(lm, [ids[j] for j in self.slot], through, final_norm=final_norm,
                                   progress=progress)

    def __call__(self, j: int) -> tuple[torch.Tensor, list[dict]]:
        k = self.slot[j]
        return self.inputs.hidden[k], self.inputs.block_kwargs(k)


class StreamedFront:
    """The front's output for one batch, computed when asked (nothing kept)."""

    def __init__(self, lm: LoadedModel, ids: list[torch.Tensor], through: int, *, final_norm: bool = False):
        self.lm, self.ids, self.through, self.final_norm = lm, ids, through, final_norm

    @torch.no_grad()
    def __call__(self, j: int) -> tuple[torch.Tensor, list[dict]]:
        lm = self.lm
        inputs = walk_blocks(lm.model, lm.arch, [self.ids[j]], lambda *a: None, blocks=range(0), through=self.through)
        h = inputs.hidden[0]
        if self.final_norm:
            h = lm.model.get_submodule(lm.arch.norm)(h)
        return h, inputs.block_kwargs(0)


def cache_bytes(lm: LoadedModel, ids: list[torch.Tensor], copies: int) -> int:
    """Memory a cache of ``copies`` hidden states per token of ``ids`` takes."""
    p = next(lm.model.parameters())
    hidden = lm.model.config.hidden_size
    return copies * sum(x.numel() for x in ids) * hidden * p.element_size()


def choose_front(front: str, lm: LoadedModel, ids: list[torch.Tensor], copies: int) -> bool:
    """Whether to stream: ``stream``/``cache`` as asked; ``auto`` streams when the cache (front and
    teacher outputs) would take more than half the memory free on the model's device."""
    if front not in FRONTS:
        raise UserError(f"unknown front {front!r}: use one of {', '.join(FRONTS)}")
    if front != "auto":
        return front == "stream"
    need = cache_bytes(lm, ids, copies)
    device = str(next(lm.model.parameters()).device)
    free = short_of(need, device)
    if free is None:
        return False
    log.warning("the frozen front's outputs for %d batches need %.1f GiB, more than half the %.1f GiB free on %s: "
                "computing them per batch instead (slower; --front cache keeps them)", len(ids), need / 2**30,
                free / 2**30, device)
    return True
