"""The staged passes of the quantization driver through one block: Hessian hooks that stop the
forward pass at a stage's input, finished branches stood in by :class:`Skip` while the residual
stream past them is carried over the block's inputs, GPTAQ's reference passes through the
original block, and the Hessians experts fall back on (see ``driver.quantize_block``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from ..models.arch import ArchSpec
from .gptq import accumulate_drift, accumulate_hessian

# An expert the router sent fewer calibration tokens than this is solved on the Hessian of all the
# block's tokens through it (its gate/up: every token entering the experts; its down: every token's
# activations through its own gate/up), and counted as such.
EXPERT_MIN_TOKENS = 32


class Stop(Exception):
    """Raised by the last Hessian hook of a stage: nothing after that point is needed yet."""


class Skip(torch.nn.Module):
    """Stands in for a finished residual branch whose output is already in the carried residual
    stream: adds nothing (``h + 0`` is ``h``, bit for bit)."""

    def forward(self, hidden_states, *args, **kwargs):
        zero = hidden_states.new_zeros(()).expand_as(hidden_states)
        return (zero, None) if self.tuple_output else zero

    def __init__(self, tuple_output: bool):
        super().__init__()
        self.tuple_output = tuple_output


@contextlib.contextmanager
def staged(block: torch.nn.Module, hessians: dict[str, list], stop_at: str, skip: dict[str, bool],
            carry: str | None, hidden: list[torch.Tensor], cursor: list[int],
            refs: dict[str, torch.Tensor] | None = None) -> Iterator[None]:
    """Within the block: accumulate the Hessians of the named linears' inputs (state ``[H, n,
    drift]``; the drift against ``refs[name]``, the original model's inputs of the same batch,
    where given), stop the forward pass at ``stop_at``'s input, stand the ``skip`` parts (name ->
    returns a tuple) in by :class:`Skip`, and write what enters ``carry`` (the residual stream
    past the parts just finished) over the current batch's block input ``hidden[cursor]``, which
    the block no longer reads by then: later stages start from it with those parts skipped."""
    handles, swapped, carried = [], {}, set()

    def make_hessian_hook(name):
        def hook(_m, args):
            state = hessians[name]
            if refs is not None and name in refs:
                state[2] = accumulate_drift(state[2], state[1], args[0], refs.pop(name))
            state[0], state[1] = accumulate_hessian(state[0], state[1], args[0])
            if name == stop_at:
                raise Stop

        return hook

    def carry_hook(_m, args, kwargs):
        h, x = hidden[cursor[0]], args[0] if args else next(iter(kwargs.values()))
        if x.shape != h.shape or x.dtype != h.dtype:
            raise RuntimeError(f"the residual stream entering {carry} does not match the block's input")
        h.copy_(x)
        carried.add(cursor[0])

    try:
        for name in hessians:
            handles.append(block.get_submodule(name).register_forward_pre_hook(make_hessian_hook(name)))
        if carry is not None:
            handles.append(block.get_submodule(carry).register_forward_pre_hook(carry_hook, with_kwargs=True))
        for part, tuple_output in skip.items():
            swapped[part] = block.get_submodule(part)
            block.set_submodule(part, Skip(tuple_output))
        yield
        if carry is not None and len(carried) != len(hidden):
            raise RuntimeError(f"the forward pass stopped before {carry}: the block's stages are out of order")
    finally:
        for h in handles:
            h.remove()
        for part, module in swapped.items():
            block.set_submodule(part, module)


@contextlib.contextmanager
def reference_inputs(original: torch.nn.Module, names: list[str], refs: dict[str, torch.Tensor]) -> Iterator[None]:
    """Within the original (unquantized) block: keep what enters each of ``names`` in ``refs``
    and stop the forward pass at the last one."""
    def make_hook(name):
        def hook(_m, args):
            refs[name] = args[0]
            if name == names[-1]:
                raise Stop

        return hook

    handles = [original.get_submodule(n).register_forward_pre_hook(make_hook(n)) for n in names]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class Fallback:
    """While a stage with expert groups runs: the Hessians an expert falls back on when the router
    sends it too few tokens (``EXPERT_MIN_TOKENS``), from a hook on the experts module, which
    receives every token of the block. For gate/up: all the tokens (the counts tell which experts
    are underfed only after the pass, so this one Hessian is always collected); for a down: all
    the tokens through the expert's own gate and up (quantized by then, in true-sequential order),
    for the experts not known to have enough tokens."""

    def __init__(self, block: torch.nn.Module, arch: ArchSpec, stage: list[tuple[str, ...]], tokens: dict[int, int]):
        names = [g[0] for g in stage if arch.expert_of(g[0]) is not None]
        self.module = block.get_submodule(arch.experts) if names else None
        self.down = "." + arch.expert_linears[2]
        self.ups = any(not n.endswith(self.down) for n in names)
        self.wanted = [e for e in (arch.expert_of(n) for n in names if n.endswith(self.down))
                       if tokens.get(e, 0) < EXPERT_MIN_TOKENS]
        self.state: dict[int | None, list] = {}
        self.handle = None

    def _hook(self, module, args):
        x = args[0].reshape(-1, args[0].shape[-1])
        if self.ups:
            self.state[None] = list(accumulate_hessian(*self.state.get(None, [None, 0]), x))
        for e in self.wanted:  # through the weights, not the modules: their Hessian hooks must not see these
            gate, up, _ = module[e].linears()
            h = module.act_fn(F.linear(x, gate.weight)) * F.linear(x, up.weight)
            self.state[e] = list(accumulate_hessian(*self.state.get(e, [None, 0]), h))

    def __enter__(self):
        if self.module is not None:
            self.handle = self.module.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.remove()

    def hessian(self, e: int, name: str) -> torch.Tensor | None:
        """The fallback Hessian of expert ``e``'s group whose first linear is ``name``."""
        return self.state.get(e if name.endswith(self.down) else None, [None])[0]
