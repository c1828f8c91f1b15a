"""Mixed precision under a budget (``--target-bpw``): more bits for the layers that need them.

Each block linear gets one of ``bit_choices`` so that the packed layers average at most
``target_bpw`` stored bits per weight (codes, zero points and fp16 scales; ``g_idx`` is not
counted), choosing the widths that minimise the expected increase of the model's loss. A layer's
cost at ``b`` bits is ``½ Σ F ⊙ ΔW²``: ``ΔW`` the error of rounding it to the ``b``-bit grid,
``F`` the empirical Fisher diagonal of the language-model loss on the calibration windows (the
squared gradients of its weights, one window at a time), a second-order estimate of the loss
increase in nats per token that is comparable across layers and adds up over them. (The
Hessian-weighted error of each layer's own output, relative to the output's energy, was tried
first: it is about the same share for every layer at a given width, so the budget went to the
smallest layers, and the mix scored worse than uniform widths at the same size: BENCHMARKS.md.)
The allocation is a knapsack solved greedily over each layer's lower convex hull of (bits,
cost): the upgrade removing the most cost per bit goes first, while the budget allows. The
gradients need the whole model in memory, once, before the block-by-block quantization.

Each layer is then quantized as usual at its own width, a plain GPTQ layer; the checkpoint states
the widths that differ from its ``bits`` as GPTQModel's ``dynamic`` rules (what GPTQModel, vLLM
and SGLang read).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..config import Config
from ..errors import UserError
from .config import QuantConfig
from .gptq import rtn_quantize
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
    error: float  # summed cost of the chosen widths (expected loss increase, nats per token)
    errors: dict[str, dict[int, float]] = field(default_factory=dict)  # layer -> width -> its cost

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


def fisher_errors(model: torch.nn.Module, names: list[str], windows: torch.Tensor, cfg: QuantConfig,
                  choices: tuple[int, ...], *, progress=None) -> dict[str, dict[int, float]]:
    """{linear name: {width: the loss increase rounding it to the width's grid is expected to
    cause}}, ``½ Σ F ⊙ ΔW²`` with ``F`` the empirical Fisher diagonal of the language-model loss
    (squared gradients, one calibration window at a time) of each of ``names``' weights and
    ``ΔW`` the rounding error. In nats per token, comparable across layers and additive over
    them. The model's parameters and their ``requires_grad`` are left as they were."""
    weights = {n: model.get_submodule(n).weight for n in names}
    trainable = {p: p.requires_grad for p in model.parameters()}
    fisher = {n: torch.zeros(w.shape, dtype=torch.float32, device=w.device) for n, w in weights.items()}
    it = progress(windows, desc="sensitivity", unit="window") if progress else windows
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for w in weights.values():
            w.requires_grad_(True)
        for window in it:
            ids = window.unsqueeze(0).to(next(iter(weights.values())).device)
            loss = model(input_ids=ids, labels=ids).loss
            for f, g in zip(fisher.values(), torch.autograd.grad(loss, list(weights.values())), strict=True):
                f.add_(g.float().square())
    finally:
        for p, was in trainable.items():
            p.requires_grad_(was)
    errors = {}
    with torch.no_grad():
        for n, w in weights.items():
            W, F = w.float(), fisher[n].div_(len(windows))
            errors[n] = {b: 0.5 * float((F * (W - rtn_quantize(W, dataclasses.replace(cfg, bits=b)).dequantize())
                                         .square()).sum()) for b in choices}
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
