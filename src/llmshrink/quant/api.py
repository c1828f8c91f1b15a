"""Quantize a model's decoder blocks with GPTQ or RTN, block by block.

For each block, in true-sequential order (q/k/v, then o, then gate/up, then down): hooks collect
the Hessian of each linear layer's inputs over the calibration windows, the pure solver returns a
:class:`QuantResult`, and the layer's weight is replaced by its dequantized solution, so the
next group and the next block see the quantized outputs. The results are returned per layer
for packing (HF GPTQ checkpoints, GGUF) by the exporters.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from ..blockwise import BlockInputs, run_block, walk_blocks
from ..config import QuantConfig
from ..errors import UserError
from ..models.arch import ArchSpec
from .gptq import QuantResult, accumulate_hessian, gptq_quantize, rtn_quantize

log = logging.getLogger(__name__)


@dataclass
class LayerRecord:
    name: str
    shape: tuple[int, int]
    loss: float  # H-weighted reconstruction error
    rtn_loss: float | None  # the same for round-to-nearest, for comparison (GPTQ only)
    damp: float
    seconds: float


@dataclass
class QuantizeReport:
    config: QuantConfig
    blocks: list[int]
    results: dict[str, QuantResult] = field(default_factory=dict)
    layers: list[LayerRecord] = field(default_factory=list)
    seconds: float = 0.0


@contextlib.contextmanager
def _hessian_hooks(modules: dict[str, torch.nn.Linear]) -> Iterator[dict[str, list]]:
    state: dict[str, list] = {name: [None, 0] for name in modules}

    def make(name):
        def hook(_m, args):
            x = args[0]
            if not torch.isfinite(x).all():
                raise UserError(f"non-finite activations enter {name}: the model or its inputs hold NaN/inf")
            state[name][0], state[name][1] = accumulate_hessian(state[name][0], state[name][1], x)

        return hook

    handles = [m.register_forward_pre_hook(make(n)) for n, m in modules.items()]
    try:
        yield state
    finally:
        for h in handles:
            h.remove()


def quantize_block(i: int, block: torch.nn.Module, inputs: BlockInputs, arch: ArchSpec, cfg: QuantConfig,
                   report: QuantizeReport, *, true_sequential: bool = True) -> None:
    groups = arch.sequential if true_sequential else (arch.linear_names,)
    for group in groups:
        mods = {name: block.get_submodule(name) for name in group}
        with _hessian_hooks(mods) as state:
            run_block(block, inputs)
        for name, mod in mods.items():
            full = f"{arch.layers}.{i}.{name}"
            W = mod.weight.data
            if not torch.isfinite(W).all():
                raise UserError(f"non-finite weights in {full}: the model file is damaged")
            H = state[name][0]
            t0 = time.perf_counter()
            rtn = rtn_quantize(W, cfg, H)
            res = gptq_quantize(W, H, cfg) if cfg.method == "gptq" else rtn
            mod.weight.data = res.dequantize().to(W.dtype).reshape(W.shape)
            report.results[full] = res
            report.layers.append(LayerRecord(full, tuple(W.shape), res.loss,
                                             rtn.loss if cfg.method == "gptq" else None, res.damp,
                                             time.perf_counter() - t0))
            log.debug("%s: loss %.4g (rtn %.4g)", full, res.loss, rtn.loss)


def quantize_model(model: torch.nn.Module, arch: ArchSpec, calib: torch.Tensor, cfg: QuantConfig, *,
                   blocks: range | None = None, batch_size: int = 8, true_sequential: bool = True,
                   progress=None) -> QuantizeReport:
    """Quantize ``blocks`` (default all) of ``model`` in place, calibrating on ``calib`` [n, seqlen]."""
    n_layers = len(arch.blocks(model))
    todo = blocks if blocks is not None else range(n_layers)
    if len(todo) == 0 or todo.start < 0 or todo.stop > n_layers:
        raise UserError(f"block range {todo.start}:{todo.stop} is outside the model's {n_layers} blocks")
    t0 = time.perf_counter()
    report = QuantizeReport(cfg, list(todo))
    batches = list(calib.split(batch_size))
    walk_blocks(model, arch, batches,
                lambda i, block, inputs: quantize_block(i, block, inputs, arch, cfg, report,
                                                        true_sequential=true_sequential),
                blocks=todo, progress=progress)
    report.seconds = time.perf_counter() - t0
    return report
