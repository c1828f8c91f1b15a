"""Affine integer grids: per-row scale and zero point (or minimum) over a group of columns.

Three kinds of grid (``kind``), each matching a file format exactly, scales fp16-representable:

- ``zero`` (HF GPTQ): ``q = clamp(round(w / scale) + zero, 0, maxq)``, ``w ≈ scale · (q − zero)``.
  Symmetric grids fix the zero point at ``(maxq + 1) / 2`` (the GPTQ reference does this);
  asymmetric grids fit it to the group's range.
- ``signed`` (GGUF Q4_0 / Q8_0): zero point fixed at ``(maxq + 1) / 2`` and a scale of either
  sign, set so that the group's largest-magnitude weight lands on the grid's longer end, as
  llama.cpp does (``d = max / −8`` for Q4_0): all 2^bits levels are used.
- ``min`` (GGUF Q4_1): ``w ≈ scale · q + min`` with an fp16 ``min`` (no integer zero point).
- ``table`` (GGUF IQ4_NL): ``w ≈ scale · levels[q]`` over a fixed non-uniform table; codes are the
  nearest level, the signed extreme on the table's first level.

Two-level (K-quant) kinds fit the groups of a super-block of 256 columns together: each group's
scale is an integer of ``scale_bits`` bits times the super-block's fp16 ``d`` (and, for ``min``
bases, each group's minimum ``−dmin · m``), as GGUF Q2_K…Q6_K store them (:func:`fit_superblock`).

The optional MSE search shrinks the range and keeps the scale with the lowest ``|w − ŵ|^2.4``
per row (the reference's ``grid=100, maxshrink=.8``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP16_TINY = 2.0**-24  # smallest fp16 subnormal: the floor of a scale's magnitude
MSE_CHUNK = 1 << 22  # elements of one [candidates, rows, cols] temporary of the MSE range search


@dataclass(frozen=True)
class GridKind:
    """How one group's grid is fitted: ``base`` (zero, signed, min) and, for two-level grids,
    the super-block the group's scale (and min) is quantized in."""

    base: str
    super_cols: int = 0  # columns per super-block (0: each group stands alone)
    scale_bits: int = 0  # bits of each group's integer scale (and min) in units of d (dmin)
    signed_scales: bool = False  # integer scales are signed (Q3_K, Q6_K); else unsigned with a min
    levels: tuple[int, ...] | None = None  # ``table`` grids: the fixed code values (times the scale)

    @property
    def two_level(self) -> bool:
        return self.super_cols > 0


_IQ4_LEVELS = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
GRID_KINDS: dict[str, GridKind] = {
    "zero": GridKind("zero"),
    "signed": GridKind("signed"),
    "min": GridKind("min"),
    "k_min4": GridKind("min", 256, 4),  # Q2_K
    "k_min6": GridKind("min", 256, 6),  # Q4_K, Q5_K
    "k_signed6": GridKind("signed", 256, 6, signed_scales=True),  # Q3_K
    "k_signed8": GridKind("signed", 256, 8, signed_scales=True),  # Q6_K
    # IQ4_NL: llama.cpp's non-uniform 16 levels (``kvalues_iq4nl``), one fp16 scale per block
    "nl4": GridKind("table", levels=_IQ4_LEVELS),
    # IQ4_XS: the same levels, each group's scale a signed 6-bit integer times the super-block's d
    "k_nl4": GridKind("table", 256, 6, signed_scales=True, levels=_IQ4_LEVELS),
}


@dataclass
class Grid:
    scale: torch.Tensor  # [rows]
    zero: torch.Tensor  # [rows], integers stored as float (0 for ``min`` grids)
    offset: torch.Tensor | None = None  # [rows]: the minimum of a ``min`` grid
    d: torch.Tensor | None = None  # [rows]: two-level grids: the super-block's fp16 scale unit
    dmin: torch.Tensor | None = None  # [rows]: two-level ``min`` grids: the fp16 unit of the minimum
    levels: torch.Tensor | None = None  # [n]: ``table`` grids: the code values

    def _cols(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t if like.dim() == 1 else t[..., None]  # [rows] (or [candidates, rows]) against [rows, cols]

    def quantize(self, w: torch.Tensor, maxq: int) -> torch.Tensor:
        """Integer codes for ``w`` ([rows] or [rows, cols])."""
        s = self._cols(self.scale, w)
        if self.levels is not None:  # the nearest level (the lower one on a tie): bisect the midpoints
            mids = (self.levels[1:] + self.levels[:-1]) / 2
            return torch.bucketize((w / s).contiguous(), mids).to(w.dtype)
        if self.offset is not None:
            return torch.clamp(torch.round((w - self._cols(self.offset, w)) / s), 0, maxq)
        return torch.clamp(torch.round(w / s) + self._cols(self.zero, w), 0, maxq)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        s = self._cols(self.scale, q)
        if self.levels is not None:
            return s * self.levels[q.long()]
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


def _table_grid(extreme: torch.Tensor, levels: torch.Tensor) -> Grid:
    scale = (extreme / levels[0]).half().float()
    scale = torch.where(scale.abs() < FP16_TINY, torch.full_like(scale, FP16_TINY), scale)
    return Grid(scale, torch.zeros_like(scale), levels=levels)


def _candidates(w: torch.Tensor, maxq: int, sym: bool, kind: str):
    """A function p -> the grid for the range shrunk by the factor p (p = 1: the full range)."""
    gk = GRID_KINDS[kind]
    if gk.levels is not None:
        levels = torch.tensor(gk.levels, dtype=w.dtype, device=w.device)
        extreme = w.gather(1, w.abs().argmax(dim=1, keepdim=True))[:, 0]
        return lambda p: _table_grid(p * extreme, levels)
    if gk.two_level and gk.base == "min":  # K-quant minimums are −dmin·m with m >= 0: never above 0
        lo, hi = torch.clamp(w.min(dim=1).values, max=0), w.max(dim=1).values
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        return lambda p: _min_grid(torch.clamp(mid - p * half, max=0), mid + p * half, maxq)
    kind = gk.base
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
    # the shrink factors' grids evaluated a chunk at a time ([chunk, rows, cols] temporaries of at
    # most MSE_CHUNK elements); the first factor with the lowest error wins, as a loop over them would
    shrink = 1 - torch.arange(int(max_shrink * grid_steps), dtype=torch.float64) / grid_steps
    best_err = torch.full_like(best.scale, float("inf"))
    step = max(1, MSE_CHUNK // max(w.numel(), 1))
    for c in range(0, len(shrink), step):
        p = shrink[c:c + step].to(w.dtype).to(w.device)[:, None]  # [chunk, 1]
        cand = make(p)
        err = (cand.dequantize(cand.quantize(w, maxq)) - w).abs().pow(norm)
        err = (err * col_weight).sum(dim=-1) if col_weight is not None else err.sum(dim=-1)  # [chunk, rows]
        low, at = err.min(dim=0)  # the first minimum within the chunk
        better = low < best_err
        best_err = torch.where(better, low, best_err)
        pick = at[None]
        best.scale = torch.where(better, cand.scale.gather(0, pick)[0], best.scale)
        best.zero = torch.where(better, cand.zero.gather(0, pick)[0], best.zero)
        if best.offset is not None:
            best.offset = torch.where(better, cand.offset.gather(0, pick)[0], best.offset)
    return best


def _weighted_error(grids: list[Grid], w: torch.Tensor, maxq: int, group: int,
                    col_weight: torch.Tensor | None) -> torch.Tensor:
    """Per row: Σ weight · (ŵ − w)² over the groups of ``w`` [rows, len(grids) · group]."""
    err = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    for k, g in enumerate(grids):
        x = w[:, k * group:(k + 1) * group]
        e = (g.dequantize(g.quantize(x, maxq)) - x).pow(2)
        err += (e * col_weight[k * group:(k + 1) * group]).sum(1) if col_weight is not None else e.sum(1)
    return err


def _quantized_units(v: torch.Tensor, bits: int, signed: bool, factor: float, *,
                     low: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, an fp16 unit ``u`` and integers ``n`` [rows, groups] of ``bits`` bits with
    ``u·n ≈ v``; ``factor`` scales the unit away from the one that maps the row's extreme on the
    integer range's end (the search tries several); unsigned integers stay >= ``low`` (1 for
    scales: a group whose scale rounded to 0 would lose its codes)."""
    if signed:  # the signed extreme on −2^(bits−1), as llama.cpp's Q3_K/Q6_K do
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        ext = v.gather(1, v.abs().argmax(dim=1, keepdim=True))[:, 0]
        u = (ext / lo * factor).half().float()
        u = torch.where(u.abs() < FP16_TINY, torch.full_like(u, FP16_TINY), u)
        n = torch.clamp(torch.round(v / u[:, None]), lo, hi)
        # a group's scale never rounds to 0 (its codes would be lost): the smallest of its sign
        n = torch.where(n == 0, torch.where(v / u[:, None] < 0, -1.0, 1.0), n)
        return u, n
    hi = (1 << bits) - 1
    u = torch.clamp(v.max(dim=1).values / hi * factor, min=FP16_TINY).half().float()
    return u, torch.clamp(torch.round(v / u[:, None]), low, hi)


_UNIT_FACTORS = (1.0, 0.98, 1.02, 0.96, 1.04, 0.94, 0.92, 0.9, 0.85)


def fit_superblock(w: torch.Tensor, maxq: int, kind: str, group: int, *, mse: bool = False,
                   col_weight: torch.Tensor | None = None) -> list[Grid]:
    """The grids of the groups of one super-block ``w`` [rows, super_cols] of a two-level kind.

    Each group's grid is fitted alone (with ``mse``, the Hessian-weighted range search), then its
    scale is written as an integer of ``scale_bits`` bits times an fp16 ``d`` per row (and its
    minimum as ``−dmin · m``): the unit is searched among a few candidates around the one that
    maps the largest scale on the integer range's end, keeping per row the one whose grids give
    the lowest ``col_weight``-weighted squared error on ``w`` (the minimum's unit after the
    scale's). Each group's scale ``d · n`` is exact in float32, as ggml computes it."""
    gk = GRID_KINDS[kind]
    w = w.float()
    subs = [fit_grid(w[:, a:a + group], maxq, sym=gk.base == "signed", mse=mse, kind=kind,
                     col_weight=None if col_weight is None else col_weight[a:a + group])
            for a in range(0, w.shape[1], group)]
    S = torch.stack([g.scale for g in subs], 1)
    M = -torch.stack([g.offset for g in subs], 1) if gk.base == "min" else None

    levels = subs[0].levels

    def make(d, sc, dmin, m) -> list[Grid]:
        scale = d[:, None] * sc
        if levels is not None:
            return [Grid(scale[:, k], torch.zeros_like(d), None, d, levels=levels) for k in range(len(subs))]
        if M is None:
            half = torch.full_like(d, (maxq + 1) / 2)
            return [Grid(scale[:, k], half, None, d) for k in range(len(subs))]
        off = -(dmin[:, None] * m)
        return [Grid(scale[:, k], torch.zeros_like(d), off[:, k], d, dmin) for k in range(len(subs))]

    def search(options):  # options: list of (d, sc, dmin, m); best per row
        best, best_err = None, None
        for opt in options:
            err = _weighted_error(make(*opt), w, maxq, group, col_weight)
            if best is None:
                best, best_err = list(opt), err
                continue
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = [torch.where(better if b.dim() == 1 else better[:, None], o, b) if b is not None else None
                    for b, o in zip(best, opt, strict=True)]
        return best

    dmin0, m0 = _quantized_units(M, gk.scale_bits, False, 1.0) if M is not None else (None, None)
    factors = _UNIT_FACTORS if mse else _UNIT_FACTORS[:1]
    d, sc, _, _ = search([(*_quantized_units(S, gk.scale_bits, gk.signed_scales, f, low=1), dmin0, m0) for f in factors])
    if M is not None and mse:
        _, _, dmin0, m0 = search([(d, sc, *_quantized_units(M, gk.scale_bits, False, f)) for f in factors])
    return make(d, sc, dmin0, m0)


def fit_groups(w: torch.Tensor, maxq: int, kind: str, group: int, *, sym: bool, mse: bool = False,
               col_weight: torch.Tensor | None = None) -> list[Grid]:
    """The grids of every group of ``w`` [rows, cols] fitted up front (RTN, static groups): one
    per group of ``group`` columns (the last one shorter), two-level kinds by super-block."""
    gk = GRID_KINDS[kind]
    if gk.two_level:
        if w.shape[1] % gk.super_cols:
            raise ValueError(f"a {kind} grid needs widths that are multiples of {gk.super_cols}, got {w.shape[1]}")
        return [g for a in range(0, w.shape[1], gk.super_cols)
                for g in fit_superblock(w[:, a:a + gk.super_cols], maxq, kind, group, mse=mse,
                                        col_weight=None if col_weight is None else col_weight[a:a + gk.super_cols])]
    return [fit_grid(w[:, a:b], maxq, sym=sym, mse=mse, kind=kind,
                     col_weight=None if col_weight is None else col_weight[a:b])
            for a, b in group_bounds(w.shape[1], group)]


def group_bounds(cols: int, group_size: int) -> list[tuple[int, int]]:
    """Column ranges of groups of ``group_size`` columns (``QuantConfig.group_columns``); the last
    group is shorter when group_size does not divide cols."""
    if group_size < 1:
        raise ValueError(f"group size must be >= 1 here, got {group_size}: normalize with QuantConfig.group_columns")
    if group_size >= cols:
        return [(0, cols)]
    return [(a, min(a + group_size, cols)) for a in range(0, cols, group_size)]
