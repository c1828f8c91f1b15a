"""Affine integer grids: per-row scale and zero point (or minimum) over a group of columns.

Three kinds of grid (``kind``), each matching a file format exactly, scales fp16-representable:

- ``zero`` (HF GPTQ): ``q = clamp(round(w / scale) + zero, 0, maxq)``, ``w ≈ scale · (q − zero)``.
  Symmetric grids fix the zero point at ``(maxq + 1) / 2`` (the GPTQ reference does this);
  asymmetric grids fit it to the group's range.
- ``signed`` (GGUF Q4_0 / Q8_0): zero point fixed at ``(maxq + 1) / 2`` and a scale of either
  sign, set so that the group's largest-magnitude weight lands on the grid's longer end, as
  llama.cpp does (``d = max / −8`` for Q4_0): all 2^bits levels are used.
- ``min`` (GGUF Q4_1): ``w ≈ scale · q + min`` with an fp16 ``min`` (no integer zero point).

The optional MSE search shrinks the range and keeps the scale with the lowest ``|w − ŵ|^2.4``
per row (the reference's ``grid=100, maxshrink=.8``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GRID_KINDS = ("zero", "signed", "min")
FP16_TINY = 2.0**-24  # smallest fp16 subnormal: the floor of a scale's magnitude


@dataclass
class Grid:
    scale: torch.Tensor  # [rows]
    zero: torch.Tensor  # [rows], integers stored as float (0 for ``min`` grids)
    offset: torch.Tensor | None = None  # [rows]: the minimum of a ``min`` grid

    def _cols(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t if like.dim() == 1 else t[:, None]

    def quantize(self, w: torch.Tensor, maxq: int) -> torch.Tensor:
        """Integer codes for ``w`` ([rows] or [rows, cols])."""
        s = self._cols(self.scale, w)
        if self.offset is not None:
            return torch.clamp(torch.round((w - self._cols(self.offset, w)) / s), 0, maxq)
        return torch.clamp(torch.round(w / s) + self._cols(self.zero, w), 0, maxq)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        s = self._cols(self.scale, q)
        if self.offset is not None:  # two roundings, as ggml and gguf-py compute d·q + m
            return s * q + self._cols(self.offset, q)
        return s * (q - self._cols(self.zero, q))


def _range_grid(xmin: torch.Tensor, xmax: torch.Tensor, maxq: int, sym: bool) -> Grid:
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, torch.zeros_like(xmin))
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, -torch.ones_like(xmin), xmin)
    xmax = torch.where(empty, torch.ones_like(xmax), xmax)
    # Checkpoints store scales as fp16: solve with fp16-representable scales, so that packing
    # loses nothing (floor at the smallest fp16 subnormal, never zero).
    scale = torch.clamp((xmax - xmin) / maxq, min=FP16_TINY).half().float()
    # Asymmetric zero points stay >= 1: the GPTQ v1 layout stores zero - 1 and cannot hold 0.
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.clamp(torch.round(-xmin / scale), 1, maxq)
    return Grid(scale, zero)


def _signed_grid(extreme: torch.Tensor, maxq: int) -> Grid:
    """Zero at (maxq+1)/2 and the signed extreme on code 0: ``scale = −extreme / ((maxq+1)/2)``."""
    half = (maxq + 1) / 2
    scale = (-extreme / half).half().float()
    scale = torch.where(scale.abs() < FP16_TINY, torch.full_like(scale, FP16_TINY), scale)
    return Grid(scale, torch.full_like(scale, half))


def _min_grid(lo: torch.Tensor, hi: torch.Tensor, maxq: int) -> Grid:
    scale = torch.clamp((hi - lo) / maxq, min=FP16_TINY).half().float()
    return Grid(scale, torch.zeros_like(scale), lo.half().float())


def _candidates(w: torch.Tensor, maxq: int, sym: bool, kind: str):
    """A function p -> the grid for the range shrunk by the factor p (p = 1: the full range)."""
    if kind == "signed":
        idx = w.abs().argmax(dim=1, keepdim=True)
        extreme = w.gather(1, idx)[:, 0]
        return lambda p: _signed_grid(p * extreme, maxq)
    if kind == "min":
        lo, hi = w.min(dim=1).values, w.max(dim=1).values
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        return lambda p: _min_grid(mid - p * half, mid + p * half, maxq)
    xmin = torch.clamp(w.min(dim=1).values, max=0)  # the range always includes 0
    xmax = torch.clamp(w.max(dim=1).values, min=0)
    return lambda p: _range_grid(p * xmin, p * xmax, maxq, sym)


def fit_grid(w: torch.Tensor, maxq: int, *, sym: bool, mse: bool = False, col_weight: torch.Tensor | None = None,
             kind: str = "zero", grid_steps: int = 100, max_shrink: float = 0.8, norm: float = 2.4) -> Grid:
    """Fit one grid of ``kind`` per row of ``w`` [rows, cols].

    ``col_weight`` [cols] weights each column's error in the MSE search (GPTQ passes the
    Hessian diagonal: errors on inputs with more energy cost more)."""
    if kind not in GRID_KINDS:
        raise ValueError(f"unknown grid kind {kind!r}")
    w = w.float()
    make = _candidates(w, maxq, sym, kind)
    best = make(1.0)
    if not mse:
        return best
    best_err = torch.full_like(best.scale, float("inf"))
    for i in range(int(max_shrink * grid_steps)):
        cand = make(1 - i / grid_steps)
        err = (cand.dequantize(cand.quantize(w, maxq)) - w).abs().pow(norm)
        err = (err * col_weight).sum(dim=1) if col_weight is not None else err.sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best.scale = torch.where(better, cand.scale, best.scale)
        best.zero = torch.where(better, cand.zero, best.zero)
        if best.offset is not None:
            best.offset = torch.where(better, cand.offset, best.offset)
    return best


def group_bounds(cols: int, group_size: int) -> list[tuple[int, int]]:
    """Column ranges of groups of ``group_size`` columns (``QuantConfig.group_columns``); the last
    group is shorter when group_size does not divide cols."""
    if group_size < 1:
        raise ValueError(f"group size must be >= 1 here, got {group_size}: normalize with QuantConfig.group_columns")
    if group_size >= cols:
        return [(0, cols)]
    return [(a, min(a + group_size, cols)) for a in range(0, cols, group_size)]
