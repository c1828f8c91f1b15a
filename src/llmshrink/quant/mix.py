"""Mixed precision under a budget (``--target-bpw``): more bits for the layers that need them.

Each block linear gets one of ``bit_choices`` so that the packed layers average at most
``target_bpw`` stored bits per weight (codes, zero points and fp16 scales; ``g_idx`` is not
counted), choosing the widths that minimise the summed relative output error. A layer's error at
``b`` bits is measured on the original model's calibration activations, block by block, as the
Hessian-weighted error of rounding it to the ``b``-bit grid, over its output's energy:
``tr(dW H dWᵀ) / tr(W H Wᵀ)`` (the share of the layer's output that rounding perturbs). The
allocation is a knapsack solved greedily over each layer's lower convex hull of (bits, error):
the upgrade with the most error removed per bit goes first, while the budget allows.

Each layer is then quantized as usual at its own width, a plain GPTQ layer; the checkpoint states
the widths that differ from its ``bits`` as GPTQModel's ``dynamic`` rules (what GPTQModel, vLLM
and SGLang read).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..blockwise import BlockInputs, run_block_seeing, walk_blocks
from ..config import Config
from ..errors import UserError
from ..models.arch import ArchSpec
from .config import QuantConfig
from .gptq import accumulate_hessian, rtn_quantize
from .pack import packing_multiple

PACKED_BITS = (2, 3, 4, 8)  # the widths a GPTQ checkpoint packs


def _choices(text: str) -> tuple[int, ...]:
    return tuple(sorted({int(b) for b in str(text).split(",") if b.strip()}))


@dataclass
class MixConfig(Config):
    """Mixed precision: each layer's width chosen under an average budget."""

    kind: ClassVar[str] = "quantize"
    target_bpw: float | None = field(default=None, metadata={
        "help": "average stored bits per weight of the quantized layers (codes + zero points + fp16 scales), "
                "each layer given one of --bit-choices by its measured sensitivity (default: every layer at --bits)"})
    bit_choices: str = field(default="2,3,4,8", metadata={"help": "with --target-bpw: the widths a layer may get"})

    def __post_init__(self) -> None:
        try:
            choices = _choices(self.bit_choices)
        except ValueError:
            choices = ()
        self.check(bool(choices) and set(choices) <= set(PACKED_BITS), "bit_choices",
                   f"must be a comma-separated list of {', '.join(map(str, PACKED_BITS))}, got {self.bit_choices!r}")
        self.check(self.target_bpw is None or self.target_bpw > 0, "target_bpw",
                   f"must be > 0 bits per weight, got {self.target_bpw!r}")

    @property
    def choices(self) -> tuple[int, ...]:
        return _choices(self.bit_choices)


def stored_bits(bits: int, shape: tuple[int, int], group_columns: int) -> int:
    """Bits a packed GPTQ layer of ``shape`` [out, in] stores: ``bits`` per code, and per group
    and output row a ``bits``-wide zero point and an fp16 scale (``g_idx`` aside)."""
    out, cols = shape
    groups = math.ceil(cols / group_columns)
    return out * cols * bits + groups * out * (bits + 16)


@dataclass
class Allocation:
    """Each layer's width, and what the choice costs and leaves."""

    bits: dict[str, int]
    bpw: float  # stored bits per weight of the chosen widths
    error: float  # summed relative error of the chosen widths
    errors: dict[str, dict[int, float]] = field(default_factory=dict)  # layer -> width -> relative error

    def to_dict(self) -> dict:
        return {"bits": self.bits, "bpw": self.bpw, "error": self.error,
                "errors": {n: {str(b): e for b, e in d.items()} for n, d in self.errors.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> Allocation:
        return cls({n: int(b) for n, b in d["bits"].items()}, float(d["bpw"]), float(d["error"]),
                   {n: {int(b): float(e) for b, e in v.items()} for n, v in d.get("errors", {}).items()})


def _hull(points: list[tuple[int, float, int]]) -> list[tuple[int, float, int]]:
    """The lower convex hull of (cost, error, width) points, by rising cost: the choices worth
    making (a dearer width that removes less error per bit than a still dearer one is skipped)."""
    hull: list[tuple[int, float, int]] = []
    for p in sorted(points):
        if hull and p[1] >= hull[-1][1]:
            continue  # costs more, removes nothing
        while len(hull) >= 2:
            (c0, e0, _), (c1, e1, _) = hull[-2], hull[-1]
            if (e0 - e1) * (p[0] - c1) <= (e1 - p[1]) * (c1 - c0):  # hull[-1] lies on or above the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def allocate(costs: dict[str, dict[int, int]], errors: dict[str, dict[int, float]], budget: float,
             weights: int) -> Allocation:
    """Widths minimising the summed error with the stored bits at most ``budget`` (bits in all,
    over ``weights`` weights). ``costs[layer][width]``: stored bits; ``errors[layer][width]``:
    its error. Greedy over each layer's hull: the upgrade removing the most error per bit first;
    one that no longer fits ends that layer's upgrades."""
    hulls = {n: _hull([(costs[n][b], errors[n][b], b) for b in costs[n]]) for n in sorted(costs)}
    at = dict.fromkeys(hulls, 0)
    total = sum(h[0][0] for h in hulls.values())
    if total > budget:
        raise UserError(f"--target-bpw {budget / weights:.3f} is below the {total / weights:.3f} bits per weight of "
                        "the narrowest --bit-choices: raise it or allow narrower widths")

    def push(heap: list, n: str) -> None:
        k, h = at[n], hulls[n]
        if k + 1 < len(h):
            gain = (h[k][1] - h[k + 1][1]) / (h[k + 1][0] - h[k][0])
            heapq.heappush(heap, (-gain, n))

    heap: list = []
    for n in hulls:
        push(heap, n)
    while heap:
        _, n = heapq.heappop(heap)
        k, h = at[n], hulls[n]
        step = h[k + 1][0] - h[k][0]
        if total + step > budget:
            continue
        total += step
        at[n] = k + 1
        push(heap, n)
    bits = {n: hulls[n][at[n]][2] for n in hulls}
    return Allocation(bits, total / weights, sum(errors[n][bits[n]] for n in bits), errors)


def relative_errors(W: torch.Tensor, H: torch.Tensor | None, cfg: QuantConfig, choices: tuple[int, ...]
                    ) -> dict[int, float]:
    """``tr(dW H dWᵀ) / tr(W H Wᵀ)`` of rounding ``W`` to each width's grid (``cfg``'s otherwise);
    without ``H`` (an expert no calibration token reached) the plain squared error's share."""
    W = W.float()
    out = {}
    if H is None:
        H = torch.eye(W.shape[1], dtype=torch.float64)
    Hf = H.to(W.device, torch.float64)
    signal = float(((W.double() @ Hf) * W.double()).sum())
    for b in choices:
        dW = (W - rtn_quantize(W, dataclasses.replace(cfg, bits=b)).dequantize()).double()
        out[b] = float(((dW @ Hf) * dW).sum()) / signal if signal > 0 else 0.0
    return out


def layer_sensitivity(model: torch.nn.Module, arch: ArchSpec, windows: torch.Tensor, cfg: QuantConfig,
                      choices: tuple[int, ...], blocks: range, *, batch_size: int = 8,
                      prepare: Callable[[int, torch.nn.Module], None] | None = None,
                      release: Callable[[torch.nn.Module], None] | None = None,
                      progress=None) -> dict[str, dict[int, float]]:
    """{full linear name: {width: relative error}} for every linear of ``blocks``, on the original
    model's activations of ``windows`` (one forward pass, block by block; ``release`` frees a
    block read by ``prepare`` once measured). The model is not changed."""
    errors: dict[str, dict[int, float]] = {}
    groups = [g for stage in arch.stage_groups for g in stage]

    def visit(i: int, block: torch.nn.Module, inputs: BlockInputs):
        hessians: dict[str, list] = {g[0]: [None, 0] for g in groups}

        def see(key: str, x: torch.Tensor) -> None:
            hessians[key][:] = accumulate_hessian(*hessians[key], x)

        outs = run_block_seeing(block, inputs, list(hessians), see)
        for g in groups:
            H = hessians[g[0]][0]
            for name in g:
                errors[f"{arch.layers}.{i}.{name}"] = relative_errors(block.get_submodule(name).weight.data, H, cfg,
                                                                      choices)
        if release is not None:
            release(block)
        return outs

    with torch.no_grad():
        walk_blocks(model, arch, list(windows.split(batch_size)), visit, blocks=blocks, prepare=prepare,
                    progress=progress)
    return errors


def plan_bits(shapes: dict[str, tuple[int, int]], errors: dict[str, dict[int, float]], cfg: QuantConfig,
              mix: MixConfig) -> Allocation:
    """The widths for layers of ``shapes`` [out, in] under ``mix.target_bpw``; a width a layer's
    shape cannot pack is not offered to it."""
    costs: dict[str, dict[int, int]] = {}
    for name, (out, cols) in shapes.items():
        fits = [b for b in mix.choices if cols % packing_multiple(b) == 0 and out % packing_multiple(b) == 0]
        if not fits:
            raise UserError(f"{name} is {out}x{cols}: none of --bit-choices {mix.bit_choices} can pack it")
        costs[name] = {b: stored_bits(b, (out, cols), cfg.group_columns(cols)) for b in fits}
    weights = sum(o * c for o, c in shapes.values())
    return allocate(costs, {n: errors[n] for n in costs}, mix.target_bpw * weights, weights)
