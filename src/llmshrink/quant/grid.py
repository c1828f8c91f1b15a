"""Affine integer grids: per-row scale and zero point over a group of columns.

``q = clamp(round(w / scale) + zero, 0, maxq)`` and ``w ≈ scale · (q − zero)``. Symmetric grids
fix the zero point at ``(maxq + 1) / 2`` (the GPTQ reference and HF GPTQ checkpoints use this);
asymmetric grids fit it to the group's range. The optional MSE search shrinks the range and keeps
the scale with the lowest ``|w − ŵ|^2.4`` per row (the reference's ``grid=100, maxshrink=.8``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Grid:
    scale: torch.Tensor  # [rows]
    zero: torch.Tensor  # [rows], integers stored as float

    def quantize(self, w: torch.Tensor, maxq: int) -> torch.Tensor:
        """Integer codes for ``w`` ([rows] or [rows, cols])."""
        s, z = (self.scale, self.zero) if w.dim() == 1 else (self.scale[:, None], self.zero[:, None])
        return torch.clamp(torch.round(w / s) + z, 0, maxq)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        s, z = (self.scale, self.zero) if q.dim() == 1 else (self.scale[:, None], self.zero[:, None])
        return s * (q - z)


def _range_grid(xmin: torch.Tensor, xmax: torch.Tensor, maxq: int, sym: bool) -> Grid:
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, torch.zeros_like(xmin))
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, -torch.ones_like(xmin), xmin)
    xmax = torch.where(empty, torch.ones_like(xmax), xmax)
    # Checkpoints store scales as fp16: solve with fp16-representable scales, so that packing
    # loses nothing (floor at the smallest fp16 subnormal, never zero).
    scale = torch.clamp((xmax - xmin) / maxq, min=2.0**-24).half().float()
    # Asymmetric zero points stay >= 1: the GPTQ v1 layout stores zero - 1 and cannot hold 0.
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.clamp(torch.round(-xmin / scale), 1, maxq)
    return Grid(scale, zero)


def fit_grid(w: torch.Tensor, maxq: int, *, sym: bool, mse: bool = False, col_weight: torch.Tensor | None = None,
             grid_steps: int = 100, max_shrink: float = 0.8, norm: float = 2.4) -> Grid:
    """Fit one grid per row of ``w`` [rows, cols] (the range always includes 0).

    ``col_weight`` [cols] weights each column's error in the MSE search (GPTQ passes the
    Hessian diagonal: errors on inputs with more energy cost more)."""
    w = w.float()
    xmin = torch.clamp(w.min(dim=1).values, max=0)
    xmax = torch.clamp(w.max(dim=1).values, min=0)
    best = _range_grid(xmin, xmax, maxq, sym)
    if not mse:
        return best
    best_err = torch.full_like(xmin, float("inf"))
    for i in range(int(max_shrink * grid_steps)):
        p = 1 - i / grid_steps
        cand = _range_grid(p * xmin, p * xmax, maxq, sym)
        err = (cand.dequantize(cand.quantize(w, maxq)) - w).abs().pow(norm)
        err = (err * col_weight).sum(dim=1) if col_weight is not None else err.sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best.scale = torch.where(better, cand.scale, best.scale)
        best.zero = torch.where(better, cand.zero, best.zero)
    return best


def group_bounds(cols: int, group_size: int) -> list[tuple[int, int]]:
    """Column ranges of the groups; the last group is shorter when group_size does not divide cols."""
    if group_size == -1 or group_size >= cols:
        return [(0, cols)]
    return [(a, min(a + group_size, cols)) for a in range(0, cols, group_size)]
