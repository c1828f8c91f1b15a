"""The quantization driver: a model's decoder blocks quantized with GPTQ or RTN, block by block,
over the block-wise driver of :mod:`llmshrink.blockwise`.

For each block, in true-sequential order (q/k/v, then o, then gate/up, then down): a hook
collects one Hessian per group of linears (they read the same input) over the calibration
windows, the pure solver returns a :class:`QuantResult` per layer, and the layer's weight is
replaced by its dequantized solution, so the next group and the next block see the quantized
outputs (see :func:`quantize_block` for the staged passes). The results are kept per layer for
the exporters, or, with ``pack=True``, packed into :class:`QuantLinear` as each block is done.
The result, a :class:`QuantizeReport`, is what the exporters (``llmshrink.exporters``) consume.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from ..blockwise import BlockInputs, Captured, Prepare, Slab, walk_blocks
from ..errors import UserError
from ..memory import release_freed
from ..models.arch import ArchSpec, check_block_range, untie_lm_head
from .config import QuantConfig
from .gptq import QuantResult, accumulate_hessian, gptq_quantize, rtn_quantize
from .qlinear import QuantLinear
from .recon import reconstruct_block
from .stages import EXPERT_MIN_TOKENS, Fallback, Stop, reference_inputs, staged

log = logging.getLogger(__name__)


@dataclass
class LayerRecord:
    name: str
    shape: tuple[int, int]
    loss: float | None  # H-weighted reconstruction error (None: RTN without calibration)
    rtn_loss: float | None  # the same for round-to-nearest, for comparison (GPTQ only)
    damp: float
    seconds: float
    tokens: int | None = None  # experts: the calibration tokens the router sent this expert
    hessian: str | None = None  # experts: "own" (its tokens) or "block" (the fallback: all the block's tokens)
    # recon: the block's output error (MSE summed over the calibration batches) before and after tuning
    block_error: tuple[float, float] | None = None
    bits: int | None = None  # the width it was quantized to (None: records from before widths were kept)

    def row(self) -> dict:
        """The record as a JSON row (the expert and recon fields only where they apply)."""
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if v is not None or k not in ("tokens", "hessian", "block_error")}


@dataclass
class QuantizeReport:
    """The driver's result: what was quantized, how, and (unless packed) each layer's solution."""

    config: QuantConfig
    blocks: list[int]
    results: dict[str, QuantResult] = field(default_factory=dict)
    layers: list[LayerRecord] = field(default_factory=list)
    lm_head: bool = False
    packed: bool = False  # layers were packed into QuantLinear as they were solved (results not kept)
    seconds: float = 0.0
    true_sequential: bool = True
    bits: dict[str, int] = field(default_factory=dict)  # layers quantized at another width than config.bits

    def layer_config(self, name: str) -> QuantConfig:
        """The settings layer ``name`` is solved with: the run's, at the layer's own width."""
        b = self.bits.get(name, self.config.bits)
        return self.config if b == self.config.bits else dataclasses.replace(self.config, bits=b)

    @property
    def scheme(self) -> dict:
        """What the quantized layers are, in the terms of the GPTQ checkpoint format."""
        cfg = self.config
        # desc_act means permuted groups (a g_idx loaders must follow); static groups stay consecutive
        # whatever the solve order, so such a checkpoint is a plain one (vLLM refuses desc_act).
        return {"bits": cfg.bits, "group_size": cfg.group_size, "desc_act": cfg.permuted_groups, "sym": cfg.sym,
                "static_groups": cfg.static_groups, "true_sequential": self.true_sequential,
                "damp_percent": cfg.damp, "method": cfg.method, "lm_head": self.lm_head,
                "modules_in_block_to_quantize": [sorted(r.name for r in self.layers)]}


LayerConfig = QuantConfig | Callable[[str], QuantConfig | None]


class Resume(Protocol):
    """A run's resume point (``jobs.resume.BlockState``): the first ``done`` blocks of the run's
    range are finished; each finished block is saved with what leaves it."""

    done: int

    def save(self, k: int, block: torch.nn.Module, outs: list[torch.Tensor], records: list[LayerRecord],
             results: dict[str, QuantResult]) -> None: ...

    def restore(self, k: int, block: torch.nn.Module) -> tuple[list[LayerRecord], dict[str, QuantResult]]: ...

    def hidden(self) -> list[torch.Tensor]: ...


def _solve(mod: torch.nn.Linear, full: str, H: torch.Tensor | None, config: LayerConfig,
           report: QuantizeReport, expert: tuple[int, str] | None = None, drift: torch.Tensor | None = None) -> None:
    """Quantize one linear layer in place (GPTQ with ``H``, GPTAQ with ``drift`` too; RTN scored
    on ``H`` if given): its weight becomes the dequantized solution; the result is kept for
    packing. ``config`` is the settings (the report's, each layer at its width in
    ``report.bits``), or a function of the layer's full name giving them (None: the layer stays
    float)."""
    cfg = config(full) if callable(config) else report.layer_config(full)
    if cfg is None:
        return
    W = mod.weight.data
    if not torch.isfinite(W).all():
        raise UserError(f"non-finite weights in {full}: the model file is damaged")
    t0 = time.perf_counter()
    rtn = rtn_quantize(W, cfg, H)
    res = gptq_quantize(W, H, cfg, drift=drift if cfg.drifts else None,
                        keep_updated=cfg.method == "recon") if cfg.solves else rtn
    mod.weight.data = res.dequantize().to(W.dtype).reshape(W.shape)
    report.results[full] = res
    report.layers.append(LayerRecord(full, tuple(W.shape), res.loss if H is not None else None,
                                     rtn.loss if cfg.solves else None, res.damp,
                                     time.perf_counter() - t0, *(expert or (None, None)), bits=cfg.bits))
    log.debug("%s: loss %.4g (rtn %.4g)", full, res.loss, rtn.loss)


def _pack(root: torch.nn.Module, names: list[tuple[str, str]], report: QuantizeReport) -> None:
    """Swap solved linears of ``root`` (local name, full name) for packed modules; drop the codes."""
    for local, full in names:
        root.set_submodule(local, QuantLinear.from_result(root.get_submodule(local), report.results.pop(full),
                                                          report.layer_config(full).bits))


def _check_hessian(H: torch.Tensor, full: str) -> None:
    if not torch.isfinite(H).all():  # NaN/inf in any input reaches H
        raise UserError(f"non-finite activations enter {full}: the model or its inputs hold NaN/inf")


@torch.no_grad()
def quantize_block(i: int, block: torch.nn.Module, inputs: BlockInputs, arch: ArchSpec, cfg: LayerConfig,
                   report: QuantizeReport, *, true_sequential: bool = True,
                   native: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Quantize one block in place and return its (quantized) outputs for the next block; the
    outputs replace the inputs in ``inputs.hidden``, which is consumed.

    ``native`` (GPTAQ): what enters this block in the original model, batch by batch. Before each
    batch of a stage, a copy of the block as it was runs on it as far as the stage's input, and
    each group's drift (the original inputs against the quantized ones; not for experts, whose
    tokens differ between the two models) is accumulated beside its Hessian. At the end the
    original block's outputs are written over ``native``: the next block's.

    True-sequential: one stage per group of linears. A stage runs the calibration batches through
    the block only as far as its group's input (the hook stops the pass there), accumulates the
    group's one shared Hessian, and solves the group. A residual branch whose linears are all
    quantized (attention, once o_proj is done) runs once more in full, and the residual stream
    past it (what enters the next branch's norm) is written over the block's inputs; later stages
    start from there with the branch skipped. So attention runs twice per block, not once per
    group, no linear runs after the last group needs it, and no branch output is kept on the
    side (151 MiB at 128 x 512 tokens on the default model). Without true-sequential, one stage
    collects all Hessians from the original block.
    """
    stages = arch.stage_groups if true_sequential else [list(arch.sequential)]
    done: set[str] = set()
    tokens: dict[int, int] = {}  # expert -> calibration tokens the router sent it
    skip: dict[str, bool] = {}  # leading parts already in the carried residual -> returns a tuple
    cursor = [0]
    hidden = inputs.hidden
    seen: dict[str, bool] = {}  # part -> its output is a tuple (a Skip must answer in kind)
    original = copy.deepcopy(block) if native is not None else None
    refs: dict[str, torch.Tensor] | None = {} if native is not None else None
    recon = isinstance(cfg, QuantConfig) and cfg.method == "recon" and native is not None
    block_inputs = [h.clone() for h in hidden] if recon else None  # the stages write over ``hidden``

    def finished_prefix() -> int:
        k = 0
        while k < len(arch.parts) and set(arch.part_linears(arch.parts[k])) <= done:
            k += 1
        return k

    for stage in stages:
        hessians = {g[0]: [None, 0, None] for g in stage}
        drifting = [g[0] for g in stage if arch.expert_of(g[0]) is None] if original is not None else []
        # parts finished by the previous stages run once more, in full, in this stage; the
        # residual stream past them (what enters the next part's norm) is written over the block
        # inputs, and later stages skip them
        k = finished_prefix()
        carry = arch.part_norms[k] if len(skip) < k < len(arch.parts) else None
        watch = [block.get_submodule(p).register_forward_hook(
                 lambda _m, _a, out, p=p: seen.__setitem__(p, isinstance(out, tuple))) for p in arch.parts[len(skip):k]]
        fallback = Fallback(block, arch, stage, tokens)
        try:
            with staged(block, hessians, stage[-1][0], skip, carry, hidden, cursor, refs), fallback:
                for b, (h, kw) in enumerate(zip(hidden, inputs.kwargs, strict=True)):
                    cursor[0] = b
                    if drifting:
                        refs.clear()
                        with reference_inputs(original, drifting, refs), contextlib.suppress(Stop):
                            original(native[b], **kw)
                    with contextlib.suppress(Stop):
                        block(h, **kw)
        finally:
            for w in watch:
                w.remove()
        if carry is not None:
            skip.update({p: seen[p] for p in arch.parts[len(skip):k]})
        for g in stage:
            H, n, drift = hessians[g[0]]
            e = arch.expert_of(g[0])
            expert = None
            if e is not None:
                tokens.setdefault(e, n)
                own = tokens[e] >= EXPERT_MIN_TOKENS
                H, expert = (H if own else fallback.hessian(e, g[0])), (tokens[e], "own" if own else "block")
            _check_hessian(H, f"{arch.layers}.{i}.{g[0]}")
            for name in g:
                _solve(block.get_submodule(name), f"{arch.layers}.{i}.{name}", H, cfg, report, expert, drift)
            done.update(g)
        H = drift = None  # the stage's Hessians are spent (a 7B down_proj's is 0.97 GB): not held through the next
        hessians.clear()
        release_freed()  # each stage's forward passes leave a differently shaped heap: trim between them

    if original is not None:  # the original model's outputs of this block: the next block's native inputs
        for b, kw in enumerate(inputs.kwargs):
            out = original(native[b], **kw)
            native[b].copy_(out[0] if isinstance(out, tuple) else out)
        del original
    if recon:
        _reconstruct(i, block, arch, block_inputs, native, inputs.kwargs, cfg, report)
        hidden[:], skip = block_inputs, {}  # the tuned block runs in full on its own inputs
    # Final pass: each batch's output is written over its input (same buffer, no new allocation),
    # so memory never holds the inputs and outputs of every batch at once.
    outs = hidden
    with staged(block, {}, "", skip, None, hidden, cursor):
        for b, kw in enumerate(inputs.kwargs):
            cursor[0] = b
            out = block(outs[b], **kw)
            out = out[0] if isinstance(out, tuple) else out
            outs[b] = outs[b].copy_(out) if out.shape == outs[b].shape and out.dtype == outs[b].dtype else out
    if not all(torch.isfinite(o).all() for o in outs):
        raise UserError(f"non-finite outputs from quantized block {arch.layers}.{i}: use more bits or calibration data")
    return outs


def _reconstruct(i: int, block: torch.nn.Module, arch: ArchSpec, inputs: list[torch.Tensor],
                 targets: list[torch.Tensor], kwargs: list[dict], cfg: QuantConfig, report: QuantizeReport) -> None:
    """Block-output reconstruction of block ``i`` (``recon``): its solved layers' results and
    weights replaced by the tuned ones."""
    t0 = time.perf_counter()
    prefix = f"{arch.layers}.{i}."
    local = {n: report.results[prefix + n] for n in arch.linear_names if prefix + n in report.results}
    maxq = {n: report.layer_config(prefix + n).maxq for n in local}
    tuned, stats = reconstruct_block(block, local, maxq, inputs, targets, kwargs, steps=cfg.recon_steps,
                                     lr=cfg.recon_lr)
    for name, res in tuned.items():  # the block holds them already
        res.updated = None
        report.results[prefix + name] = res
    stats.seconds = time.perf_counter() - t0
    for r in report.layers:
        if r.name.startswith(prefix):
            r.block_error = (stats.before, stats.after)
    log.info("block %d: output error %.4g -> %.4g (%s, %.1f s)", i, stats.before, stats.after,
             "tuned" if stats.kept else "GPTQ's kept", stats.seconds)


@torch.no_grad()
def _quantize_head(model: torch.nn.Module, arch: ArchSpec, final: BlockInputs | None, cfg: QuantConfig,
                   report: QuantizeReport) -> None:
    untie_lm_head(model, arch)  # quantizing it must not touch tied embeddings
    head = model.get_submodule(arch.lm_head)
    H = None
    if final is not None:
        norm, n = model.get_submodule(arch.norm), 0
        for h in final.hidden:
            H, n = accumulate_hessian(H, n, norm(h))
        _check_hessian(H, arch.lm_head)
    _solve(head, arch.lm_head, H, cfg, report)


def quantize_model(model: torch.nn.Module, arch: ArchSpec, calib: torch.Tensor | None, cfg: QuantConfig, *,
                   layer_config: Callable[[str], QuantConfig | None] | None = None, bits: dict[str, int] | None = None,
                   blocks: range | None = None, batch_size: int = 8, true_sequential: bool = True,
                   lm_head: bool = False, pack: bool = False, prepare: Prepare | None = None,
                   captured: Captured | None = None, resume: Resume | None = None, store: Path | None = None,
                   progress=None) -> QuantizeReport:
    """Quantize ``blocks`` (default all) of ``model`` in place, calibrating on ``calib`` [n, seqlen];
    with ``lm_head`` the output projection too (untied from the embeddings), calibrated on the
    final norm's outputs of the quantized model.

    By default each layer keeps a float weight holding its quantized values and ``report.results``
    the solutions. With ``pack`` each block's layers become packed :class:`QuantLinear` modules as
    soon as the block is done, and the solutions are dropped: with ``prepare`` (which loads a
    block's weights when the driver reaches it, see ``models.lazy``) memory then holds one block
    in float, not the model.

    RTN without ``calib`` rounds the weights directly; with ``calib`` it is run through the same
    driver as GPTQ so that its H-weighted loss is reported for comparison. ``layer_config`` gives
    each layer (by full name) its own settings, None leaving it float (a GGUF mix's types); it
    needs ``cfg.method``'s calibration and is not packed. ``bits``: layers (by full name) quantized
    at another width than ``cfg.bits`` (mixed precision, :mod:`llmshrink.quant.mix`).

    ``resume`` keeps each finished block (packed, or its solutions) and what leaves it, and skips
    the blocks it holds already: they are put back as they were and the first block not done
    starts from the saved activations (see ``jobs.resume``). ``store``: a file that holds the
    calibration activations, memory-mapped, instead of memory (``blockwise.Slab``)."""
    layers = arch.blocks(model)
    n_layers = len(layers)
    todo = blocks if blocks is not None else range(n_layers)
    check_block_range(todo, n_layers)
    t0 = time.perf_counter()
    report = QuantizeReport(cfg, list(todo), lm_head=lm_head, packed=pack, true_sequential=true_sequential,
                            bits={n: b for n, b in (bits or {}).items() if b != cfg.bits})
    if layer_config is not None and pack:
        raise ValueError("per-layer settings are for exporters, which consume the results: not with pack")
    solve: LayerConfig = layer_config or cfg

    def done(i: int, block: torch.nn.Module) -> None:
        if pack:
            _pack(block, [(n, f"{arch.layers}.{i}.{n}") for n in arch.linear_names], report)
            # the block's float weights are gone, its small packed buffers stay: hand the holes
            # they leave in the heap back to the kernel, or resident memory creeps up block by block
            release_freed()

    def kept(i: int, block: torch.nn.Module, outs: list[torch.Tensor], first: int) -> None:
        if resume is not None:
            prefix = f"{arch.layers}.{i}."
            resume.save(todo.index(i), block, outs, report.layers[first:],
                        {n: r for n, r in report.results.items() if n.startswith(prefix)})

    def restored(i: int, block: torch.nn.Module) -> None:
        records, results = resume.restore(todo.index(i), block)
        report.layers.extend(records)
        report.results.update(results)

    final = None
    if calib is None:
        if cfg.method != "rtn":
            raise UserError(f"{cfg.method} needs calibration data")
        for i in progress(todo, desc="blocks", unit="block") if progress else todo:
            if prepare is not None:
                prepare(i, layers[i])
            if resume is not None and todo.index(i) < resume.done:
                restored(i, layers[i])
                continue
            first = len(report.layers)
            for name in arch.linear_names:
                _solve(layers[i].get_submodule(name), f"{arch.layers}.{i}.{name}", None, solve, report)
            done(i, layers[i])
            kept(i, layers[i], [], first)
    else:
        # GPTAQ: what enters the next block in the original model (from the first block solved on;
        # kept by ``resume`` after the quantized model's)
        native: list[list[torch.Tensor]] = []

        def visit(i, block, inputs):
            k = todo.index(i)
            if resume is not None and k < resume.done:  # finished before: put back, no pass
                restored(i, block)
                if k < resume.done - 1:
                    return inputs.hidden
                saved, n = resume.hidden(), len(inputs.hidden)
                native[:] = [saved[n:]] if cfg.drifts else []
                return saved[:n]
            if cfg.drifts and not native:  # beside the quantized model's: in memory, or in a file beside ``store``
                slab = Slab([h.shape[0] for h in inputs.hidden],
                            store.with_name(store.stem + "-original" + store.suffix) if store is not None else None)
                native.append([slab.keep(b, h.clone()) for b, h in enumerate(inputs.hidden)])
            first = len(report.layers)
            outs = quantize_block(i, block, inputs, arch, solve, report, true_sequential=true_sequential,
                                  native=native[0] if native else None)
            done(i, block)
            kept(i, block, outs + (native[0] if native else []), first)
            return outs

        final = walk_blocks(model, arch, list(calib.split(batch_size)), visit, blocks=todo,
                            through=n_layers if lm_head else None, prepare=prepare, captured=captured,
                            store=store, progress=progress)
    if lm_head:
        _quantize_head(model, arch, final, cfg, report)
        if pack:
            _pack(model, [(arch.lm_head, arch.lm_head)], report)
    report.seconds = time.perf_counter() - t0
    fallbacks = [r.name for r in report.layers if r.hessian == "block"]
    if fallbacks:
        log.warning("%d expert layers (%s, ...) got fewer than %d calibration tokens from the router: solved on the "
                    "block's Hessian instead (quantize_layers.jsonl says which); more --nsamples gives each its own",
                    len(fallbacks), fallbacks[0], EXPERT_MIN_TOKENS)
    return report
