"""Block importance: one score per decoder block, lower = less important (safer to remove).

Criteria (a registry; each takes the model, its :class:`ArchSpec` and batches of token ids):

- ``ppl``: perplexity of the model with that one block removed, on the scoring windows
  (Shortened LLaMA, arXiv 2402.02834). The hidden states entering block i are the same for every
  candidate j >= i, so one pass walks the blocks and, at block j, runs only the suffix j+1.. from
  the states entering j: L(L-1)/2 block runs instead of the naive L(L-1), and the scores are
  identical to :func:`ppl_leave_one_out_naive` (same operations on the same tensors).
- ``taylor``: Taylor+ -- sum over the block's weights of |w * dL/dw|, with L the next-token loss
  on the scoring windows (first-order estimate of the loss change when the block is zeroed).
- ``magnitude``: the block's weight norm, sum of |w| over its linear layers (no data).
- ``angular``: mean angular distance arccos(cos(h_in, h_out)) / pi between each token's hidden
  state entering and leaving the block (ShortGPT; Gromov et al., arXiv 2403.17887).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..blockwise import capture_block_inputs, no_cache, run_block, walk_blocks
from ..errors import UserError
from ..losses import token_nll
from ..models.arch import ArchSpec, logit_cap, soft_cap

Scorer = Callable[..., "tuple[list[float], dict]"]


@dataclass
class BlockScores:
    criterion: str
    scores: list[float]  # one per block; lower = less important
    seconds: float
    detail: dict = field(default_factory=dict)  # criterion-specific extras (e.g. the full model's ppl)

    def order(self, keep_first: int = 0, keep_last: int = 0) -> list[int]:
        """Removable block indices, least important first (ties: the later block first)."""
        n = len(self.scores)
        candidates = range(keep_first, n - keep_last)
        return sorted(candidates, key=lambda i: (self.scores[i], -i))


def _nll_sum(logits: torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
    """Sum of next-token negative log-likelihoods (float64) and the number of targets."""
    nll = token_nll(logits, ids)
    return float(nll.double().sum()), nll.numel()


def _head_nll(model: torch.nn.Module, arch: ArchSpec, hidden: list[torch.Tensor],
              batches: list[torch.Tensor]) -> float:
    """Mean NLL of the model's head (final norm, lm_head) on the final hidden states."""
    norm, head, cap = model.get_submodule(arch.norm), model.get_submodule(arch.lm_head), logit_cap(model)
    total, count = 0.0, 0
    for h, ids in zip(hidden, batches, strict=True):
        s, c = _nll_sum(soft_cap(head(norm(h)), cap), ids.to(h.device))
        total += s
        count += c
    return total / count


@torch.no_grad()
def ppl_leave_one_out(model, arch: ArchSpec, batches: list[torch.Tensor], progress=None) -> tuple[list[float], dict]:
    """Perplexity with each block removed, reusing the shared prefix (see the module docstring)."""
    layers = arch.blocks(model)
    n = len(layers)
    with no_cache(model):
        inputs = capture_block_inputs(model, arch, batches)
        scores = []
        it = progress(range(n), desc="ppl scores", unit="block") if progress else range(n)
        for j in it:
            hidden = inputs.hidden  # what enters block j, i.e. block j-1's output: skip j
            for k in range(j + 1, n):
                hidden = run_block(layers[k], inputs.at(k, hidden))
            scores.append(math.exp(_head_nll(model, arch, hidden, batches)))
            if j < n - 1:
                inputs = inputs.at(j + 1, run_block(layers[j], inputs.at(j)))
    return scores, {"block_runs": n * (n - 1) // 2 + n - 1}


@torch.no_grad()
def ppl_leave_one_out_naive(model, arch: ArchSpec, batches: list[torch.Tensor],
                            progress=None) -> tuple[list[float], dict]:
    """The reference: for each block, a full forward pass of the model without it."""
    parent_name, _, attr = arch.layers.rpartition(".")
    parent = model.get_submodule(parent_name)
    layers = arch.blocks(model)
    n = len(layers)
    device = next(model.parameters()).device
    scores = []
    it = progress(range(n), desc="ppl scores (naive)", unit="block") if progress else range(n)
    try:
        for j in it:
            setattr(parent, attr, torch.nn.ModuleList([b for i, b in enumerate(layers) if i != j]))
            total, count = 0.0, 0
            for ids in batches:
                ids = ids.to(device)
                s, c = _nll_sum(model(input_ids=ids, use_cache=False).logits, ids)
                total += s
                count += c
            scores.append(math.exp(total / count))
    finally:
        setattr(parent, attr, layers)
    return scores, {"block_runs": n * (n - 1)}


def taylor(model, arch: ArchSpec, batches: list[torch.Tensor], progress=None) -> tuple[list[float], dict]:
    """Taylor+: sum over each block's weights of |w * dL/dw| (L: mean next-token loss)."""
    layers = arch.blocks(model)
    device = next(model.parameters()).device
    saved = {p: p.requires_grad for p in model.parameters()}
    block_params = {id(p) for b in layers for p in b.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in block_params)
        p.grad = None
    n_targets = sum(b.size(0) * (b.size(1) - 1) for b in batches)
    it = progress(batches, desc="taylor", unit="batch") if progress else batches
    try:
        with no_cache(model), torch.enable_grad():
            total = 0.0
            for ids in it:
                ids = ids.to(device)
                logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
                loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1),
                                       reduction="sum") / n_targets
                loss.backward()
                total += float(loss.detach())
        scores = [float(sum((p.detach() * p.grad).abs().sum().double() for p in b.parameters()
                            if p.grad is not None)) for b in layers]
    finally:
        for p, flag in saved.items():
            p.grad = None
            p.requires_grad_(flag)
    return scores, {"loss": total}


def magnitude(model, arch: ArchSpec, batches=None, progress=None) -> tuple[list[float], dict]:
    """Sum of |w| over each block's linear layers (the same layer sizes in every block)."""
    scores = []
    for b in arch.blocks(model):
        with torch.no_grad():
            scores.append(float(sum(m.weight.detach().abs().double().sum() for m in arch.block_linears(b).values())))
    return scores, {}


def angular(model, arch: ArchSpec, batches: list[torch.Tensor], progress=None) -> tuple[list[float], dict]:
    """Mean over tokens of arccos(cos(h_in, h_out)) / pi for each block."""
    scores: list[float] = []

    def visit(_i, block, inputs):
        outs = run_block(block, inputs)
        total, count = 0.0, 0
        for h_in, h_out in zip(inputs.hidden, outs, strict=True):
            cos = F.cosine_similarity(h_in.float(), h_out.float(), dim=-1).clamp(-1.0, 1.0)
            total += float(torch.arccos(cos).double().sum()) / math.pi
            count += cos.numel()
        scores.append(total / count)
        return outs

    with torch.no_grad(), no_cache(model):
        walk_blocks(model, arch, batches, visit, progress=progress)
    return scores, {}


CRITERIA: dict[str, Scorer] = {
    "ppl": ppl_leave_one_out,
    "taylor": taylor,
    "magnitude": magnitude,
    "angular": angular,
}


def score_blocks(model, arch: ArchSpec, batches: list[torch.Tensor] | None, criterion: str,
                 *, progress=None) -> BlockScores:
    """Score every decoder block of ``model`` by ``criterion`` on ``batches`` of token ids."""
    if criterion not in CRITERIA:
        raise UserError(f"unknown criterion {criterion!r}: use one of {', '.join(CRITERIA)}")
    if criterion != "magnitude" and not batches:
        raise UserError(f"criterion {criterion!r} needs scoring data: give a corpus")
    t0 = time.perf_counter()
    scores, detail = CRITERIA[criterion](model, arch, batches, progress=progress)
    return BlockScores(criterion, scores, time.perf_counter() - t0, detail)
