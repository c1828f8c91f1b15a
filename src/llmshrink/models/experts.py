"""Mixture-of-experts blocks with a linear layer per expert.

transformers 5 keeps a block's experts as two stacked parameters (``gate_up_proj``
[experts, 2·inter, hidden], ``down_proj`` [experts, hidden, inter]). llmshrink gives each expert
modules of its own, ``{e}.gate_proj``, ``{e}.up_proj`` and ``{e}.down_proj`` (the layout the
checkpoints on disk have), so that the driver sees each as a linear layer fed only the tokens
the router sends it (its own Hessian), and each can be packed as a GPTQ layer. The forward
pass is transformers' own routing loop over these modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError


class Expert(torch.nn.Module):
    """One expert's gate, up and down projections, under the names its checkpoints give them
    (``gate_proj``/``up_proj``/``down_proj``; Mixtral's ``w1``/``w3``/``w2``)."""

    def __init__(self, hidden: int, inter: int, names: tuple[str, str, str], *, dtype: torch.dtype,
                 device: torch.device | str):
        super().__init__()
        kw = {"bias": False, "dtype": dtype, "device": device}
        self.names = names
        for name, (i, o) in zip(names, ((hidden, inter), (hidden, inter), (inter, hidden)), strict=True):
            self.add_module(name, torch.nn.Linear(i, o, **kw))

    def linears(self) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
        return tuple(getattr(self, n) for n in self.names)  # type: ignore[return-value]

    def inner(self, x: torch.Tensor, act_fn) -> torch.Tensor:
        """What enters the down projection: ``act(gate(x)) * up(x)``."""
        gate, up, _ = self.linears()
        return act_fn(gate(x)) * up(x)


class ExpertList(torch.nn.ModuleList):
    """A block's experts, one :class:`Expert` each, called as transformers' stacked experts module
    is: ``(hidden_states [tokens, hidden], top_k_index, top_k_weights)`` -> the weighted sum of
    the chosen experts' outputs per token."""

    def __init__(self, experts: list[Expert], act_fn):
        super().__init__(experts)
        object.__setattr__(self, "act_fn", act_fn)  # not a child: the list holds experts only

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        n = len(self)
        with torch.no_grad():
            mask = F.one_hot(top_k_index, num_classes=n + 1).permute(2, 1, 0)
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
        for e in hit[:, 0].tolist():
            if e == n:
                continue
            pos, tok = torch.where(mask[e])
            x = hidden_states[tok]
            ex = self[e]
            h = ex.linears()[2](ex.inner(x, self.act_fn))
            out.index_add_(0, tok, (h * top_k_weights[tok, pos, None]).to(out.dtype))
        return out


def split_experts(stacked: torch.nn.Module, names: tuple[str, str, str]) -> ExpertList:
    """transformers' stacked experts module as an :class:`ExpertList` holding the same weights."""
    gate_up, down = stacked.gate_up_proj, stacked.down_proj
    n, two_inter, hidden = gate_up.shape
    inter = two_inter // 2
    experts = []
    for e in range(n):
        ex = Expert(hidden, inter, names, dtype=gate_up.dtype, device=gate_up.device)
        if not gate_up.is_meta:
            gate, up, dn = ex.linears()
            with torch.no_grad():
                gate.weight.copy_(gate_up[e, :inter])
                up.weight.copy_(gate_up[e, inter:])
                dn.weight.copy_(down[e])
        experts.append(ex)
    return ExpertList(experts, stacked.act_fn)


def unfuse_experts(model: torch.nn.Module, layers: str, experts: str, names: tuple[str, str, str]) -> int:
    """Give every block's stacked experts (module ``experts`` of each block of ``layers``) a
    module per expert, in place; returns how many blocks changed."""
    changed = 0
    for i, block in enumerate(model.get_submodule(layers)):
        try:
            stacked = block.get_submodule(experts)
        except AttributeError:
            raise UserError(f"block {i} has no {experts} (a dense block among mixture-of-experts ones, as "
                            "mlp_only_layers makes): llmshrink handles models whose every block has experts") from None
        if not isinstance(stacked, ExpertList):
            block.set_submodule(experts, split_experts(stacked, names))
            changed += 1
    return changed


def expert_count(model: torch.nn.Module, layers: str, experts: str) -> int:
    """The number of experts per block."""
    mod = model.get_submodule(layers)[0].get_submodule(experts)
    return len(mod) if isinstance(mod, ExpertList) else int(mod.gate_up_proj.shape[0])
