"""GPTQ: quantize a weight matrix column by column, compensating each column's rounding error on
the columns not yet quantized, weighted by the layer's input Hessian.

ref: Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers", arXiv 2210.17323, and its reference code (IST-DASLab/gptq, ``gptq.py``).

What differs from the reference:
- pure: tensors in, a :class:`QuantResult` out (integer codes, per-group scales/zeros, g_idx,
  loss, the damping used); nothing is printed and no module is touched;
- a group size that does not divide the width makes the last group shorter (no padding);
- the inverse Hessian is factorised in float64, and in float32 (the reference's precision) from
  8192 input columns (``QuantConfig.solve_dtype``), in place;
- if the Cholesky factorisation fails (H not positive-definite after damping), damping is raised
  tenfold and the solve retried, up to ``max_retries`` times; the damping used is returned;
- the loss reported is the H-weighted reconstruction error tr((W−Q) H (W−Q)ᵀ) on the undamped H;
- a group's grid is fitted on its columns with every update made so far, lazy ones included;
- the optional MSE range search (the reference's ``grid``/``maxshrink``) weights each column's
  error by the Hessian diagonal.

GPTAQ (``drift``): Li et al., "GPTAQ: Efficient Finetuning-Free Quantization for Asymmetric
Calibration", arXiv 2504.02692. The quantized model's layer inputs X̃ differ from the original
model's X; the solve targets the original outputs W X instead of W X̃, through the cross term
ΔX X̃ᵀ (``drift``, accumulated as H is). Two forms (``QuantConfig.drift_solve``):
- ``target``: GPTQ on ``W + α · W ΔX X̃ᵀ H⁻¹``, the least-squares solution of the asymmetric
  problem (for α = 1 the objective is then GPTQ's, up to a constant);
- ``columns``: the paper's (and GPTQModel's ``v2``): each column's update gains ``w · P[i, i:]``
  with ``P = α · triu(ΔX X̃ᵀ Uᵀ, 1) U`` (U: the upper Cholesky factor of H⁻¹). The lazy block
  updates use the columns as they stood when rounded, so the result does not depend on
  ``block_size`` (GPTQModel's use the rounded columns).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import UserError
from .config import QuantConfig
from .grid import GRID_KINDS, Grid, fit_groups, group_bounds

log = logging.getLogger(__name__)


@dataclass
class QuantResult:
    q: torch.Tensor  # [out, in] integer codes (uint8: every width is <= 8 bits), original column order
    scales: torch.Tensor  # [groups, out] float32
    zeros: torch.Tensor  # [groups, out] integer zero points (int32)
    g_idx: torch.Tensor  # [in] int32: group of each input column
    perm: torch.Tensor | None  # act-order permutation, if any
    loss: float  # tr((W - Ŵ) H (W - Ŵ)ᵀ), H undamped
    damp: float  # damping fraction actually used (0 for RTN)
    mins: torch.Tensor | None = None  # [groups, out] float32: ``min`` grids (Ŵ = scale·q + min)
    d: torch.Tensor | None = None  # [groups, out]: two-level grids: each group's super-block unit (scale = d·n)
    dmin: torch.Tensor | None = None  # [groups, out]: two-level ``min`` grids: the minimum's unit (min = −dmin·m)
    levels: torch.Tensor | None = None  # [n]: ``table`` grids: code q stands for scale · levels[q]
    # [out, in] float32, original column order (``keep_updated``): each weight as the solve's updates left
    # it when its column was rounded (the codes are its rounding on the grid); for block reconstruction
    updated: torch.Tensor | None = None

    def dequantize(self) -> torch.Tensor:
        """Ŵ [out, in] in float32, built in place: one [out, in] temporary beside it."""
        cols = self.g_idx.long()
        if self.levels is not None:
            w = self.levels[self.q.int()]
            return w.mul_(self.scales.T[:, cols])
        w = self.q.float()
        if self.mins is not None:
            return w.mul_(self.scales.T[:, cols]).add_(self.mins.T[:, cols])
        return w.sub_(self.zeros.T[:, cols]).mul_(self.scales.T[:, cols])


def _stack(grids: list[Grid], g_idx: torch.Tensor, q: torch.Tensor, perm, damp: float) -> QuantResult:
    scales = torch.stack([g.scale for g in grids])
    zeros = torch.stack([g.zero for g in grids]).round().to(torch.int32)
    mins = torch.stack([g.offset for g in grids]) if grids[0].offset is not None else None
    d = torch.stack([g.d for g in grids]) if grids[0].d is not None else None
    dmin = torch.stack([g.dmin for g in grids]) if grids[0].dmin is not None else None
    return QuantResult(q.to(torch.uint8), scales, zeros, g_idx, perm, 0.0, damp, mins, d, dmin, grids[0].levels)


def accumulate_hessian(H: torch.Tensor | None, n: int, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Running ``H = 2/n Σ x xᵀ`` over the rows of ``x`` [..., in]; returns (H, n).

    Each batch's product is formed in float32 (the cost of quantization is dominated by these
    products and the forward passes) and summed into a float64 ``H``, a band of rows at a time
    (at 11008 columns a float64 copy of the product would be 0.97 GB)."""
    x = x.reshape(-1, x.shape[-1]).float()
    m = x.shape[0]
    if H is None:
        H = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    H *= n / (n + m)
    n += m
    _add_banded(H, x.T @ x, 2 / n)
    return H, n


def _add_banded(acc: torch.Tensor, prod: torch.Tensor, scale: float) -> None:
    """``acc += prod · scale`` (float64 += float32), a band of 1024 rows at a time: no [in, in]
    float64 temporary."""
    for r in range(0, prod.shape[0], 1024):
        acc[r:r + 1024] += prod[r:r + 1024].double() * scale


def accumulate_drift(D: torch.Tensor | None, n: int, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Running ``D = 2/n Σ (ref − x) xᵀ`` (GPTAQ's ΔX X̃ᵀ) over the rows of ``x`` (the quantized
    model's layer inputs) and ``ref`` (the original model's, for the same tokens); ``n`` counts
    the rows before this batch, as :func:`accumulate_hessian` takes it. Same bands and precision."""
    x = x.reshape(-1, x.shape[-1]).float()
    ref = ref.reshape(-1, ref.shape[-1]).float()
    if ref.shape != x.shape:
        raise ValueError(f"reference inputs {tuple(ref.shape)} do not match the inputs {tuple(x.shape)}")
    m = x.shape[0]
    if D is None:
        D = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    D *= n / (n + m)
    _add_banded(D, (ref - x).T @ x, 2 / (n + m))
    return D


def weighted_error(W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor) -> float:
    """tr((W − Q) H (W − Q)ᵀ) in float64, a band of 1024 rows at a time (the whole difference in
    float64 would be three [out, in] temporaries: 1 GB for a 7B model's down_proj)."""
    H = H.double()
    total = 0.0
    for r in range(0, W.shape[0], 1024):
        D = W[r:r + 1024].double() - Q[r:r + 1024].double()
        total += float(((D @ H) * D).sum())
    return total


def _inverse_cholesky(build: Callable[[], torch.Tensor], damp: float, max_retries: int) -> tuple[torch.Tensor, float]:
    """The upper Cholesky factor of the damped Hessian's inverse, in float32. ``build`` returns a
    fresh copy of the Hessian in solve order (float64 or float32: the precision of the
    factorisations), which is factorised, inverted and factorised again in place: through its
    transpose, a column-major view, which LAPACK overwrites without a temporary. So one [in, in]
    matrix lives beside the caller's (11008² float64 is 0.97 GB: a 7B model's down_proj), and
    the float64 result is bit for bit what the out-of-place sequence gives."""
    for attempt in range(max_retries + 1):
        A = build()
        mean_diag = float(torch.diag(A).mean())
        A.diagonal().add_(damp * mean_diag)  # H + damp·mean·I, bit for bit, without the identity
        At = A.mT  # column-major: the out= of the factorisations below is their input's own memory
        try:
            torch.linalg.cholesky(At, out=At)
            torch.cholesky_inverse(At, out=At)
            torch.linalg.cholesky(At, upper=True, out=At)
        except torch.linalg.LinAlgError:
            del A, At
            if attempt == max_retries:
                break
            log.warning("Hessian not positive-definite with damp=%g; retrying with damp=%g", damp, damp * 10)
            damp *= 10
            continue
        if At.dtype == torch.float32:
            return At, damp  # column-major, no copy
        return torch.empty(At.shape, dtype=torch.float32, device=At.device).copy_(At), damp
    raise UserError(
        f"the Hessian stayed singular up to damp={damp:g}: calibrate on more or more varied text (--nsamples)"
    )


def _solve_order(H: torch.Tensor, dead: torch.Tensor, perm: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """A ``dtype`` copy of ``H`` with its dead columns' diagonal set to 1, rows and columns in
    solve order (``perm``), filled a band of rows at a time into one [in, in] allocation."""
    n = H.shape[0]
    A = torch.empty((n, n), dtype=dtype, device=H.device)
    for a in range(0, n, 512):
        band = H[a:a + 512] if perm is None else H.index_select(0, perm[a:a + 512]).index_select(1, perm)
        A[a:a + 512] = band
    if dead.any():
        d = dead[perm] if perm is not None else dead
        A[d, d] = 1
    return A


def _drift_in_solve_order(drift: torch.Tensor, dead: torch.Tensor, perm: torch.Tensor | None,
                          dtype: torch.dtype) -> torch.Tensor:
    """A ``dtype`` copy of the drift (the caller's is never written), dead columns zeroed, rows
    and columns in solve order."""
    D = drift.to(dtype, copy=True)
    D[:, dead] = 0
    return D if perm is None else D[perm][:, perm]


def _drift_target(W: torch.Tensor, D: torch.Tensor, Hinv: torch.Tensor, alpha: float) -> torch.Tensor:
    """The least-squares target's offset ``α · W ΔX X̃ᵀ H⁻¹`` (H⁻¹ = Uᵀ U, damped), in solve order:
    with α = 1, ``‖Q X̃ − W X‖² = ‖(Q − W̃) X̃‖² + const`` for ``W̃`` = W plus this, so GPTQ on W̃
    solves the asymmetric problem."""
    return (W @ D).matmul(Hinv.T).matmul(Hinv).mul_(alpha)


def _drift_update(D: torch.Tensor, Hinv: torch.Tensor, alpha: float) -> torch.Tensor:
    """GPTAQ's ``P = α · triu(D Uᵀ, 1) U`` in solve order, float32 (``Hinv``: U)."""
    return (D @ Hinv.T).triu_(1).matmul(Hinv).mul_(alpha)


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, cfg: QuantConfig, *, drift: torch.Tensor | None = None,
                  keep_updated: bool = False, max_retries: int = 4) -> QuantResult:
    """Quantize ``W`` [out, in] given the input Hessian ``H`` [in, in]; with ``drift`` (GPTAQ's
    ΔX X̃ᵀ [in, in], see :func:`accumulate_drift`), against the original model's outputs; with
    ``keep_updated``, the result carries the weights as rounded (``QuantResult.updated``)."""
    in_f = W.shape[1]
    if H.shape != (in_f, in_f):
        raise ValueError(f"Hessian of shape {tuple(H.shape)} does not match weight of shape {tuple(W.shape)}")
    maxq = cfg.maxq
    W0 = W.float()
    W = W0.clone()
    H = H.to(torch.float64)  # the caller's (never written), or a float64 copy; kept for the loss
    dead = torch.diag(H) == 0
    W[:, dead] = 0
    diag = torch.where(dead, 1.0, torch.diag(H))

    gs = cfg.group_columns(in_f)
    span = GRID_KINDS[cfg.grid].super_cols or gs  # columns whose grids are fitted together
    perm = None
    if cfg.act_order:
        perm = torch.argsort(diag, descending=True)
        W = W[:, perm]

    hdiag = (diag[perm] if perm is not None else diag).float()  # weights of the MSE grid search, in solve order
    dtype = torch.float64 if cfg.solve_precision(in_f) == "float64" else torch.float32
    Hinv, damp = _inverse_cholesky(lambda: _solve_order(H, dead, perm, dtype), cfg.damp, max_retries)
    P = None
    if drift is not None:
        D = _drift_in_solve_order(drift, dead, perm, Hinv.dtype)
        if cfg.drift_solve == "columns":
            P = _drift_update(D, Hinv, cfg.alpha)
        else:
            W += _drift_target(W, D, Hinv, cfg.alpha)
        del D
    static: list[Grid] | None = None
    if cfg.static_groups and not cfg.per_row:
        unpermuted = W if perm is None else W[:, torch.argsort(perm)]
        static = fit_groups(unpermuted, maxq, cfg.grid, gs, sym=cfg.sym, mse=cfg.mse, col_weight=diag.float())

    Q = torch.zeros_like(W)
    Qint = torch.zeros_like(W, dtype=torch.uint8)  # codes are <= 8 bits
    U = torch.empty_like(W) if keep_updated else None
    g_idx = torch.empty(in_f, dtype=torch.int32, device=W.device)
    order = perm.tolist() if perm is not None else None  # one host copy, not one sync per column
    grids: dict[int, Grid] = {}
    grid = None
    for i1 in range(0, in_f, cfg.block_size):
        i2 = min(i1 + cfg.block_size, in_f)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        Wq1 = torch.zeros_like(W1) if P is not None or U is not None else None  # each column as it was rounded
        P1 = P[i1:i2, i1:i2] if P is not None else None
        for i in range(i2 - i1):
            col = i1 + i  # position in the (possibly permuted) order
            orig = order[col] if order is not None else col
            if static is not None:
                g = orig // gs
                grid = static[g]
            else:
                g = col // gs
                if col % span == 0:
                    end = min(col + span, in_f)
                    fitted = fit_groups(_group_columns(W, W1, Err1, Hinv, i1, i, i2, end, Wq1, P), maxq, cfg.grid, gs,
                                        sym=cfg.sym, mse=cfg.mse, col_weight=hdiag[col:end])
                    grids.update({g + k: gr for k, gr in enumerate(fitted)})
                grid = grids[g]
            assert grid is not None
            w = W1[:, i]
            d = Hinv1[i, i]
            qi = grid.quantize(w, maxq)
            q = grid.dequantize(qi)
            Qint[:, col] = qi
            Q[:, col] = q
            err = (w - q) / d
            update = err[:, None] * Hinv1[i, i:][None, :]
            if Wq1 is not None:
                Wq1[:, i] = w
            if P1 is not None:
                update -= w[:, None] * P1[i, i:][None, :]
            W1[:, i:] -= update
            Err1[:, i] = err
            g_idx[orig] = g
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
        if P is not None:
            W[:, i2:] += Wq1 @ P[i1:i2, i2:]
        if U is not None:
            U[:, i1:i2] = Wq1
    del Hinv, Hinv1, d, W, W1, Err1, P, P1, Wq1  # spent (views included): only the solution and its loss are left

    if perm is not None:
        inv = torch.argsort(perm)
        Q, Qint = Q[:, inv], Qint[:, inv]
        U = U[:, inv] if U is not None else None
    final = static if static is not None else [grids[g] for g in range(len(grids))]
    res = _stack(final, g_idx, Qint, perm, damp)
    res.loss = weighted_error(W0, Q, H)
    res.updated = U
    return res


def _group_columns(W, W1, Err1, Hinv, i1: int, i: int, i2: int, end: int, Wq1=None, P=None) -> torch.Tensor:
    """Columns [i1+i, end) with every update made so far, the lazy ones past this block included.

    The reference fits a group's grid on ``W`` whose columns in and past the current block do not
    yet carry this block's updates; we fit on the weights as they will be quantized.
    """
    inside = W1[:, i: min(end, i2) - i1]
    if end <= i2:
        return inside
    ahead = W[:, i2:end] - Err1[:, :i] @ Hinv[i1: i1 + i, i2:end]
    if P is not None:  # GPTAQ's share of the lazy update
        ahead += Wq1[:, :i] @ P[i1: i1 + i, i2:end]
    return torch.cat([inside, ahead], dim=1)


def rtn_quantize(W: torch.Tensor, cfg: QuantConfig, H: torch.Tensor | None = None) -> QuantResult:
    """Round-to-nearest on the same grids (the baseline); ``H``, if given, only scores the loss."""
    W0 = W.float()
    gs = cfg.group_columns(W0.shape[1])
    bounds = group_bounds(W0.shape[1], gs)
    grids = fit_groups(W0, cfg.maxq, cfg.grid, gs, sym=cfg.sym, mse=cfg.mse)
    q = torch.cat([gr.quantize(W0[:, a:b], cfg.maxq).to(torch.uint8) for gr, (a, b) in zip(grids, bounds, strict=True)],
                  dim=1)
    g_idx = torch.cat([torch.full((b - a,), g, dtype=torch.int32, device=W0.device) for g, (a, b) in enumerate(bounds)])
    res = _stack(grids, g_idx, q, None, 0.0)
    if H is not None:
        res.loss = weighted_error(W0, res.dequantize(), H)
    return res
