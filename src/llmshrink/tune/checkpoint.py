"""Training checkpoints: the trainable tensors and the optimizer state, in safetensors.

A checkpoint is a folder (``model.safetensors``: trainable parameters by name and the optimizer's
moment tensors; ``state.json``: step, losses, the optimizer's hyperparameters and the job's
config hash), written beside the final output and replaced atomically, so an interrupted run
loses at most the steps since the last checkpoint. Nothing is unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..paths import atomic_dir


@dataclass
class Checkpoint:
    step: int
    params: dict[str, torch.Tensor]
    opt_state: dict
    losses: list[float]
    tokens: int


def save_checkpoint(folder: Path, *, step: int, params: dict[str, torch.nn.Parameter], opt: torch.optim.Optimizer,
                    losses: list[float], tokens: int, config_hash: str) -> None:
    from safetensors.torch import save_file

    sd = opt.state_dict()
    tensors = {f"param.{name}": p.detach().contiguous() for name, p in params.items()}
    scalars: dict[str, dict] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value) and value.dim() > 0:
                tensors[f"opt.{idx}.{key}"] = value.contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = float(value)
    meta = {"step": step, "config_hash": config_hash, "losses": losses, "tokens": tokens,
            "param_names": list(params), "param_groups": sd["param_groups"], "scalars": scalars}
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta) + "\n")


def load_checkpoint(folder: Path, params: dict[str, torch.nn.Parameter], config_hash: str) -> Checkpoint:
    """Read a checkpoint for these parameters; refuses one made with other settings."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        meta = json.loads((folder / "state.json").read_text())
        tensors = load_file(str(folder / "model.safetensors"))
    except (OSError, ValueError, SafetensorError) as exc:
        raise UserError(f"checkpoint {folder} is unreadable ({exc}): delete it to start over") from exc
    if meta["config_hash"] != config_hash or meta["param_names"] != list(params):
        raise UserError(f"checkpoint {folder} was made with other settings: delete it to start over, "
                        "or resume with the settings it was made with")
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["scalars"].items():
        for name, v in values.items():
            state.setdefault(int(idx), {})[name] = torch.tensor(v)
    own = {name: tensors[f"param.{name}"] for name in params}
    return Checkpoint(meta["step"], own, {"state": state, "param_groups": meta["param_groups"]},
                      meta["losses"], meta["tokens"])
