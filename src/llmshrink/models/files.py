"""Weight files on disk: which safetensors shards a folder holds, their headers checked."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError


def find_shards(folder: Path) -> list[Path]:
    """The folder's safetensors shards, headers checked; pickled weights are refused."""
    shards = list_shards(folder)
    check_safetensors(shards)
    return shards


def list_shards(folder: Path) -> list[Path]:
    """The folder's safetensors shards, headers not read yet (for a reader that reads and checks
    them itself, e.g. ``lazy.SafetensorsIndex``); pickled weights are refused."""
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
            raise UserError(
                f"{folder} holds only pickled PyTorch weights, which llmshrink does not load "
                f"(unpickling runs code): convert them to safetensors first"
            )
        raise UserError(f"{folder} holds no *.safetensors weights: give a complete model folder")
    return shards


# safetensors dtype names llmshrink reads
ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool}


@dataclass(frozen=True)
class HeaderEntry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


def read_header(shard: Path) -> dict[str, HeaderEntry]:
    """A safetensors file's header, every entry checked against the file (dtype known, shape and
    extent consistent, inside the file); a damaged file is named.

    Format: 8-byte little-endian header length, a JSON header giving each tensor's dtype, shape
    and ``data_offsets`` into the data section that follows."""
    try:
        size = shard.stat().st_size
        with open(shard, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or 8 + n > size:
                raise ValueError("header length is past the end of the file")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        return {name: _entry(name, v, 8 + n, size) for name, v in header.items() if name != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise UserError(f"{shard} is not a readable safetensors file ({exc}): it may be truncated; restore it") from exc


def _entry(name: str, v: dict, base: int, size: int) -> HeaderEntry:
    dtype = ST_DTYPES.get(v["dtype"]) if isinstance(v, dict) and isinstance(v.get("dtype"), str) else None
    if dtype is None:
        raise ValueError(f"tensor {name} has no dtype llmshrink reads")
    shape, (a, b) = v["shape"], v["data_offsets"]
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape) \
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in (a, b)):
        raise ValueError(f"tensor {name} has a bad shape or offsets")
    if not 0 <= a <= b or b - a != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"tensor {name}: its offsets do not hold a {list(shape)} {v['dtype']} tensor")
    if base + b > size:
        raise ValueError(f"data section holds {size - base} bytes, the header needs {b}")
    return HeaderEntry(dtype, tuple(shape), base + a, base + b)


def fingerprint(folder: Path) -> list[list]:
    """What identifies a folder's weights without reading them (each shard's name, size and
    modification time): a resume point made from other weights is not continued."""
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(Path(folder).glob("*.safetensors"))]


def check_safetensors(shards: list[Path]) -> None:
    """Read each shard's header, so a truncated or damaged file is named instead of failing mid-load."""
    for shard in shards:
        read_header(shard)


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


@dataclass(frozen=True)
class StoredTensor:
    """A tensor left in a safetensors file: where its bytes are, not the bytes."""

    path: Path
    entry: HeaderEntry

    @property
    def dtype(self) -> torch.dtype:
        return self.entry.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.entry.shape

    @property
    def nbytes(self) -> int:
        return self.entry.end - self.entry.start


def stored_tensors(path: Path) -> dict[str, StoredTensor]:
    """Every tensor of a safetensors file, as :class:`StoredTensor` (its header read and checked)."""
    return {name: StoredTensor(path, e) for name, e in read_header(path).items()}


def metadata_of(path: Path) -> dict[str, str]:
    """A safetensors file's ``__metadata__`` (``{}`` when it has none)."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        return json.loads(fh.read(n)).get("__metadata__") or {}


# safetensors' own order of the data section: dtypes from the widest (its enum, descending), then names
_ST_NAMES = {v: k for k, v in ST_DTYPES.items()}
_ST_RANK = ("I64", "F64", "F32", "I32", "BF16", "F16", "I16", "I8", "U8", "BOOL")
_CHUNK = 64 << 20


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor | StoredTensor], metadata: dict[str, str]) -> None:
    """A safetensors file, byte for byte what ``safetensors.torch.save_file`` writes for the same
    tensors, written one tensor at a time: an in-memory tensor from its own memory (no copy), a
    :class:`StoredTensor` copied from its file in chunks (never resident in this process). So a
    file larger than memory can be assembled from files already on disk."""
    order = sorted(tensors, key=lambda n: (_ST_RANK.index(_ST_NAMES[tensors[n].dtype]), n))
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name in order:
        t = tensors[name]
        n = t.nbytes if isinstance(t, StoredTensor) else t.numel() * t.element_size()
        header[name] = {"dtype": _ST_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for name in order:
            t = tensors[name]
            if isinstance(t, StoredTensor):
                _copy_range(t, fh)
            else:
                t = t.detach().cpu()
                fh.write(memoryview((t if t.is_contiguous() else t.contiguous()).reshape(-1).view(torch.uint8).numpy()))


def _copy_range(t: StoredTensor, out) -> None:
    with open(t.path, "rb") as src:
        src.seek(t.entry.start)
        left = t.nbytes
        while left:
            chunk = src.read(min(left, _CHUNK))
            if not chunk:
                raise UserError(f"{t.path} ends inside a tensor: the file is truncated; restore it")
            out.write(chunk)
            left -= len(chunk)
