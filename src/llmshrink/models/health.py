"""Health checks: a model whose weights or activations hold NaN/inf is stopped with the name of
the tensor or layer, not evaluated to ``perplexity nan`` or generating empty text."""

from __future__ import annotations

import torch

from ..errors import UserError


def nonfinite_tensor(model: torch.nn.Module) -> str | None:
    """The name of the first floating-point parameter or buffer holding NaN/inf (None: all finite)."""
    named = [*model.named_parameters(), *model.named_buffers()]
    for name, t in named:
        if t.is_floating_point() and t.device.type != "meta" and not torch.isfinite(t).all():
            return name
    return None


def check_weights(model: torch.nn.Module, what: str) -> None:
    """Refuse a model with non-finite weights, naming the tensor."""
    name = nonfinite_tensor(model)
    if name is not None:
        raise UserError(f"non-finite weights (NaN/inf) in {name} of {what}: the model file is damaged; "
                        "restore or re-create it")


@torch.no_grad()
def nonfinite_module(model: torch.nn.Module, input_ids: torch.Tensor) -> str | None:
    """The first module (in execution order) whose output holds NaN/inf on ``input_ids``."""
    found: list[str] = []

    def hook(name):
        def fn(_m, _a, out):
            t = out[0] if isinstance(out, tuple) else out
            if not found and isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
                found.append(name)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        model(input_ids=input_ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


def nonfinite_activations_error(model: torch.nn.Module, input_ids: torch.Tensor, what: str) -> UserError:
    """The error for non-finite outputs of ``model`` on ``input_ids``, naming the first layer."""
    name = nonfinite_module(model, input_ids) or "the model's output"
    dtype = next((p.dtype for p in model.parameters()), None)
    hint = "use --dtype float32" if dtype in (torch.float16, torch.bfloat16) else "the model is damaged"
    return UserError(f"non-finite activations (NaN/inf) leave {name} while {what}: {hint}")
