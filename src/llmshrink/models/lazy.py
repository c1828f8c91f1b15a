"""Load a model with its decoder blocks left on disk, to be read one block at a time.

For jobs that walk the blocks once (quantization), holding every block's float weights is
waste: the model skeleton is built with its parameters on the ``meta`` device (no memory),
embeddings, final norm and lm_head are read at once, and :meth:`LazyBlocks.materialize` reads
one block's tensors when the driver reaches it. Tensors are read with plain file reads at the
offsets of the safetensors header, not through a memory map, so the file's pages never count
towards the process's resident memory, and one tensor at a time is in flight.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..memory import available_memory
from .arch import ArchSpec, prepare_modules
from .files import read_header


@dataclass(frozen=True)
class _Entry:
    shard: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the shard
    end: int

    def loaded_bytes(self, dtype: torch.dtype) -> int:
        """Memory the tensor takes once read, a floating one converted to ``dtype``."""
        n = self.end - self.start
        return n // self.dtype.itemsize * dtype.itemsize if self.dtype.is_floating_point else n


class SafetensorsIndex:
    """Where each tensor of a folder's safetensors shards lives, from their headers."""

    def __init__(self, shards: list[Path]):
        self.entries: dict[str, _Entry] = {}
        for shard in shards:
            for name, e in read_header(shard).items():
                self.entries[name] = _Entry(shard, e.dtype, e.shape, e.start, e.end)

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        e = self.entries[name]
        with open(e.shard, "rb") as fh:
            fh.seek(e.start)
            buf = bytearray(fh.read(e.end - e.start))
        if len(buf) != e.end - e.start:
            raise UserError(f"{e.shard} ends inside tensor {name}: the file is truncated; restore it")
        t = torch.frombuffer(buf, dtype=e.dtype) if buf else torch.empty(0, dtype=e.dtype)
        t = t.reshape(e.shape)
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        return t


class LazyBlocks:
    """Reads decoder blocks' weights on demand into a model whose blocks sit on ``meta``."""

    def __init__(self, index: SafetensorsIndex, arch: ArchSpec, dtype: torch.dtype, device: str = "cpu"):
        self.index, self.arch, self.dtype, self.device = index, arch, dtype, device
        self._dropped: list[tuple[torch.nn.Module, str, str, bool]] = []  # (owner, leaf, checkpoint key, grad)

    def drop(self, model: torch.nn.Module, keys: list[str]) -> None:
        """Free these parameters (checkpoint names, e.g. the embedding once the calibration inputs
        are captured: nothing reads it again until saving) and every tie to them; :meth:`restore`
        reads them back from disk."""
        targets = {}
        for key in keys:
            if key not in self.index.entries:
                continue
            owner, _, leaf = key.rpartition(".")
            targets[id(getattr(model.get_submodule(owner), leaf))] = key
        for mod in model.modules():
            for leaf, p in list(mod._parameters.items()):
                if p is not None and id(p) in targets:
                    self._dropped.append((mod, leaf, targets[id(p)], p.requires_grad))
                    mod._parameters[leaf] = torch.nn.Parameter(torch.empty_like(p, device="meta"),
                                                               requires_grad=p.requires_grad)

    def restore(self) -> None:
        """Read back what :meth:`drop` freed; tied parameters are tied again."""
        loaded: dict[str, torch.nn.Parameter] = {}
        for mod, leaf, key, grad in self._dropped:
            if key not in loaded:
                loaded[key] = torch.nn.Parameter(self.index.read(key, self.dtype).to(self.device), requires_grad=grad)
            mod._parameters[leaf] = loaded[key]
        self._dropped.clear()

    @staticmethod
    def is_materialized(block: torch.nn.Module) -> bool:
        return not any(p.is_meta for p in block.parameters())

    def materialize(self, i: int, block: torch.nn.Module) -> None:
        """Read block ``i``'s tensors: parameters as the model's dtype, buffers (a packed layer's
        codes, zeros, fp16 scales) as stored."""
        if self.is_materialized(block):
            return
        prefix = f"{self.arch.layers}.{i}."
        params = {name for name, _ in block.named_parameters()}
        state = {}
        for k in self.index.entries:
            if k.startswith(prefix):
                local = self.arch.from_disk(k[len(prefix):])
                state[local] = self.index.read(k, self.dtype if local in params else None).to(self.device)
        missing, unexpected = block.load_state_dict(state, strict=False, assign=True)
        if missing or unexpected:
            raise UserError(f"block {i} in the checkpoint does not match the model (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}): the checkpoint is incomplete")


    @staticmethod
    def release(block: torch.nn.Module) -> None:
        """Free a block's tensors (back on ``meta``) once a job is done with it; ``materialize``
        reads them again."""
        block.to_empty(device="meta")


def load_lazy(folder: Path, shards: list[Path], arch: ArchSpec, dtype: torch.dtype, device: str,
              trust_remote_code: bool) -> tuple[torch.nn.Module, LazyBlocks]:
    """The model with everything but its decoder blocks loaded; the blocks come from the
    returned :class:`LazyBlocks`."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    index = SafetensorsIndex(shards)
    check_block_fits(folder, index, arch, dtype, device)
    hf_cfg = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    with init_empty_weights(include_buffers=False):
        model = prepare_modules(AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype,
                                                                 trust_remote_code=trust_remote_code), arch)
    return load_outside_blocks(folder, model, index, arch, dtype, device)


def load_outside_blocks(folder: Path, model: torch.nn.Module, index: SafetensorsIndex, arch: ArchSpec,
                        dtype: torch.dtype, device: str) -> tuple[torch.nn.Module, LazyBlocks]:
    """Read into ``model`` (built on ``meta``) every tensor outside the decoder blocks: parameters
    as ``dtype``, buffers (a packed lm_head's) as stored; ties the head to the embedding where
    the config says so."""
    prefix = arch.layers + "."
    params = {name for name, _ in model.named_parameters()}
    state = {k: index.read(k, dtype if arch.from_disk(k) in params else None).to(device)
             for k in index.entries if not k.startswith(prefix)}
    state = {arch.from_disk(k): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {f"{arch.lm_head}.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    missing = [k for k in missing if not k.startswith(prefix) and k not in tied]
    if missing or unexpected:
        raise UserError(f"{folder}: weights do not match the model (missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}): the checkpoint is incomplete")
    if tied:
        model.get_submodule(arch.lm_head).weight = model.get_submodule(arch.embed).weight
    for buf_name, buf in model.named_buffers():  # rotary tables etc. were built on the CPU
        if buf.device != torch.device(device) and not buf.is_meta:
            owner, _, leaf = buf_name.rpartition(".")
            model.get_submodule(owner)._buffers[leaf] = buf.to(device)
    return model.eval(), LazyBlocks(index, arch, dtype, device)


def check_block_fits(folder: Path, index: SafetensorsIndex, arch: ArchSpec, dtype: torch.dtype, device: str) -> None:
    """Refuse, before reading any weight, a model whose largest decoder block, with the tensors
    that stay loaded (embedding, final norm, lm_head), cannot fit in the memory ``device`` has
    free: block by block is the least a job over it can hold."""
    prefix = arch.layers + "."
    blocks: dict[str, int] = {}
    rest = 0
    for name, e in index.entries.items():
        if name.startswith(prefix):
            i = name[len(prefix):].split(".", 1)[0]
            blocks[i] = blocks.get(i, 0) + e.loaded_bytes(dtype)
        else:
            rest += e.loaded_bytes(dtype)
    need = rest + max(blocks.values(), default=0)
    free = available_memory(device)
    if free is not None and need > free:
        raise UserError(f"{folder}: one decoder block with the embedding and lm_head needs {need / 2**30:.1f} GiB as "
                        f"{str(dtype).removeprefix('torch.')}, and {device} has {free / 2**30:.1f} GiB free: the model "
                        "does not fit even block by block; use --dtype bfloat16 or a machine with more memory")
