"""Importance of each input column of every block linear: the mean squared input over the
calibration windows (the statistic ``llama-imatrix`` computes, which llama.cpp's quantizer
weights its rounding with, and the diagonal of GPTQ's Hessian over the number of rows).

Computed block by block through the shared driver, so memory stays near one block."""

from __future__ import annotations

import torch

from ..blockwise import BlockInputs, run_block_seeing, walk_blocks
from ..models.arch import ArchSpec


def input_importance(model: torch.nn.Module, arch: ArchSpec, windows: torch.Tensor, *, batch_size: int = 8,
                     progress=None) -> dict[str, tuple[torch.Tensor, int]]:
    """{full linear name: (mean of x² per input column [in] float32, rows seen)} for every linear
    of every decoder block, from the float model's own activations on ``windows`` [n, seqlen]."""
    stats: dict[str, tuple[torch.Tensor, int]] = {}

    def visit(i: int, block: torch.nn.Module, inputs: BlockInputs):
        sums: dict[str, torch.Tensor] = {}
        rows: dict[str, int] = {}

        def see(local: str, x: torch.Tensor) -> None:
            x = x.reshape(-1, x.shape[-1]).double()
            sums[local] = sums.get(local, 0) + (x * x).sum(0)
            rows[local] = rows.get(local, 0) + x.shape[0]

        outs = run_block_seeing(block, inputs, arch.linear_names, see)
        for local, s in sums.items():
            stats[f"{arch.layers}.{i}.{local}"] = ((s / rows[local]).float(), rows[local])
        return outs

    with torch.no_grad():
        walk_blocks(model, arch, list(windows.split(batch_size)), visit, progress=progress)
    return stats
