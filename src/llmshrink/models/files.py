"""Weight files on disk: which safetensors shards a folder holds, their headers checked."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError


def find_shards(folder: Path) -> list[Path]:
    """The folder's safetensors shards, headers checked; pickled weights are refused."""
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
            raise UserError(
                f"{folder} holds only pickled PyTorch weights, which llmshrink does not load "
                f"(unpickling runs code): convert them to safetensors first"
            )
        raise UserError(f"{folder} holds no *.safetensors weights: give a complete model folder")
    check_safetensors(shards)
    return shards


def check_safetensors(shards: list[Path]) -> None:
    """Read each shard's header, so a truncated or damaged file is named instead of failing mid-load.

    Format: 8-byte little-endian header length, a JSON header giving each tensor's
    ``data_offsets`` into the data section that follows.
    """
    for shard in shards:
        try:
            size = shard.stat().st_size
            with open(shard, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                if n <= 0 or 8 + n > size:
                    raise ValueError("header length is past the end of the file")
                header = json.loads(fh.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            if 8 + n + end > size:
                raise ValueError(f"data section holds {size - 8 - n} bytes, the header needs {end}")
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise UserError(
                f"{shard} is not a readable safetensors file ({exc}): it may be truncated; restore it"
            ) from exc


def check_tensors(expected: dict, found: dict[str, tuple[tuple[int, ...], bool]], folder: Path) -> None:
    """Each tensor the files hold (name -> (shape, is floating point)) against the model's own
    (``expected``, a state dict, e.g. of a model built on ``meta``): a weight of another shape or
    kind is named before any loading."""
    for name, (shape, floating) in found.items():
        want = expected.get(name)
        if want is None:
            continue
        if tuple(want.shape) != tuple(shape):
            raise UserError(f"{folder}: tensor {name} has shape {list(shape)} but the model's config.json needs "
                            f"{list(want.shape)}: the weights and config.json do not match; restore them")
        if want.is_floating_point() != floating:
            kind = "floating-point" if want.is_floating_point() else "integer"
            raise UserError(f"{folder}: tensor {name} should hold {kind} values and does not: the weights are "
                            "damaged; restore them")
