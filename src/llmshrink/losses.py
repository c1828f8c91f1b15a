"""Losses over a causal language model's logits, shared by evaluation, scoring and training."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """-log p(ids[:, t]) from the logits at t-1, flattened: [batch * (length - 1)]."""
    logits = logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none")


def token_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) of the next-token distributions at every position but the last,
    flattened like :func:`token_nll`; at a ``temperature``, of both distributions softened by it."""
    t = F.log_softmax(teacher_logits[:, :-1].float() / temperature, dim=-1)
    s = F.log_softmax(student_logits[:, :-1].float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1).reshape(-1)
