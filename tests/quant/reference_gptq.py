"""The reference GPTQ solve, transcribed for tests: IST-DASLab/gptq ``gptq.py`` (``GPTQ.fasterquant``)
and ``quant.py`` (``Quantizer.find_params``, ``quantize``), for weight matrices.

Kept apart from the package on purpose: llmshrink's ``gptq_quantize`` is checked against this
loop bit for bit, with llmshrink's deviations switched off (no MSE search, lazy-update block =
group size, so a group's grid is fitted on the same weights the reference sees). Two format
constraints of llmshrink's grid are applied to the reference quantizer too, as arguments, because
they are not solve deviations but what a checkpoint can store: scales rounded to fp16 and
asymmetric zero points kept >= 1 (the GPTQ v1 layout stores ``zero - 1``). The Hessian is
factorised in ``h_dtype`` (the reference uses float32; llmshrink float64, then float32 for the
inverse factor).
"""

from __future__ import annotations

import torch


def find_params(x: torch.Tensor, maxq: int, sym: bool, fp16_scale: bool = True, zero_min: int = 1):
    """``Quantizer.find_params(x, weight=True)`` (no ``mse``): per-row scale and zero."""
    tmp = torch.zeros(x.shape[0], device=x.device)
    xmin = torch.minimum(x.min(1)[0], tmp)
    xmax = torch.maximum(x.max(1)[0], tmp)
    if sym:
        xmax = torch.maximum(torch.abs(xmin), xmax)
        neg = xmin < 0
        if torch.any(neg):
            xmin[neg] = -xmax[neg]
    empty = (xmin == 0) & (xmax == 0)
    xmin[empty] = -1
    xmax[empty] = +1
    scale = (xmax - xmin) / maxq
    if fp16_scale:
        scale = torch.clamp(scale, min=2.0**-24).half().float()
    if sym:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale)
        zero = torch.clamp(zero, zero_min, maxq)
    return scale, zero


def quantize(x, scale, zero, maxq):
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


def fasterquant(W: torch.Tensor, H: torch.Tensor, *, bits: int, groupsize: int, sym: bool, actorder: bool,
                static_groups: bool, percdamp: float = 0.01, blocksize: int = 128,
                h_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The dequantized solution Q [out, in] of the reference loop, in the original column order."""
    maxq = 2**bits - 1
    W = W.clone().float()
    columns = W.shape[1]
    H = H.clone().to(h_dtype)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    scale = zero = None
    groups = []
    if static_groups:
        for i in range(0, columns, groupsize):
            groups.append(find_params(W[:, i:(i + groupsize)], maxq, sym))
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]
        invperm = torch.argsort(perm)

    Q = torch.zeros_like(W)
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    Hinv = H.float()

    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if not static_groups:
                if (i1 + i) % groupsize == 0:
                    scale, zero = find_params(W[:, (i1 + i):(i1 + i + groupsize)], maxq, sym)
            else:
                idx = i1 + i
                if actorder:
                    idx = perm[idx]
                scale, zero = groups[idx // groupsize]
            q = quantize(w.unsqueeze(1), scale.unsqueeze(1), zero.unsqueeze(1), maxq).flatten()
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

    if actorder:
        Q = Q[:, invperm]
    return Q
