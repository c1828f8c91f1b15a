"""Load GPTQ checkpoints (``quant_method: gptq``, ours and AutoGPTQ/GPTQModel's v1 format).

A module is quantized where the safetensors hold ``<name>.qweight``; everything else loads as
usual, so mixed checkpoints (some blocks packed, the rest full precision) need nothing special.
A checkpoint whose modules are named as another reader names them (GPTQModel's Mixtral experts,
its split Phi-3 MLP: :mod:`llmshrink.models.gptq_layout`) is read back into the usual names.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ..errors import UserError
from ..quant.qlinear import QuantLinear
from .arch import ArchSpec, arch_of, prepare_modules
from .files import check_safetensors, check_tensors
from .gptq_layout import Layout, read_layout
from .gptq_rules import bits_per_config, packed_per_config
from .lazy import LazyBlocks, SafetensorsIndex, check_block_fits, load_outside_blocks


def _bits(folder: Path, qc: dict) -> int:
    fmt = qc.get("checkpoint_format", "gptq")
    if fmt != "gptq":
        raise UserError(f"{folder}: GPTQ checkpoint_format {fmt!r} is not supported; llmshrink reads 'gptq' (v1)")
    try:
        bits = int(qc["bits"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{folder}/config.json: quantization_config has no valid bits: restore the file") from None
    if bits not in (2, 3, 4, 8):
        raise UserError(f"{folder}/config.json: quantization_config says bits {bits}; GPTQ checkpoints llmshrink "
                        "reads have 2, 3, 4 or 8: restore the file")
    return bits


def _skeleton(folder: Path, dtype: torch.dtype, trust_remote_code: bool, *, empty: bool = False):
    """The model of ``folder``'s config with plain linears (parameters on ``meta`` when ``empty``)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_cfg = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    if hasattr(hf_cfg, "quantization_config"):
        del hf_cfg.quantization_config
    with init_empty_weights(include_buffers=False) if empty else contextlib.nullcontext():
        model = AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype, trust_remote_code=trust_remote_code)
    arch = arch_of(model)
    prepare_modules(model, arch)
    return model, arch


def _install_packed(folder: Path, qc: dict, bits: int, model: torch.nn.Module, arch: ArchSpec,
                    found: dict[str, tuple[tuple[int, ...], torch.dtype]], layout: Layout | None, *,
                    device: str | None = None) -> None:
    """Swap a :class:`QuantLinear` in for each linear whose ``qweight`` the files hold (``found``:
    tensor name -> (shape, dtype), our names), on ``device`` (``meta``: no memory); check every
    tensor's shape and kind against the model before any is read."""
    packed = sorted(k.removesuffix(".qweight") for k in found if k.endswith(".qweight"))
    _check_rules(folder, qc, model, arch, set(packed), layout)
    for name in packed:
        lacking = [p for p in ("qzeros", "scales", "g_idx") if f"{name}.{p}" not in found]
        if lacking:
            raise UserError(f"{folder}: {name} has packed weights but no {', '.join(lacking)}: "
                            "the checkpoint is incomplete")
        linear = model.get_submodule(name)
        if not isinstance(linear, torch.nn.Linear):
            raise UserError(f"{folder}: {name} holds packed weights but is not a linear layer in this architecture")
        shape, scale_dtype = found[f"{name}.scales"]
        disk = arch.to_disk(name)
        width = bits_per_config(qc, layout.name(disk)[0] if layout else disk, bits)
        if width not in (2, 3, 4, 8):
            raise UserError(f"{folder}/config.json: a dynamic rule gives {name} {width} bits; GPTQ packs 2, 3, 4 or 8: "
                            "restore the file")
        with torch.device(device) if device else contextlib.nullcontext():
            model.set_submodule(name, QuantLinear(linear.in_features, linear.out_features, width, shape[0],
                                                  bias=f"{name}.bias" in found, dtype=scale_dtype))
    check_tensors(model.state_dict(), {n: (tuple(shape), dt.is_floating_point) for n, (shape, dt) in found.items()},
                  folder)


def load_gptq(folder: Path, config: dict, dtype: torch.dtype, trust_remote_code: bool) -> torch.nn.Module:
    from safetensors.torch import load_file

    qc = config["quantization_config"]
    bits = _bits(folder, qc)
    shards = sorted(folder.glob("*.safetensors"))
    check_safetensors(shards)
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(shard))
    model, arch = _skeleton(folder, dtype, trust_remote_code)
    layout = read_layout(model.config.model_type, state)
    state = {arch.from_disk(k): v for k, v in (layout.read(state) if layout else state).items()}
    _install_packed(folder, qc, bits, model, arch, {n: (tuple(t.shape), t.dtype) for n, t in state.items()}, layout)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    missing = sorted(set(missing) - tied)
    if missing or unexpected:
        raise UserError(f"{folder}: weights do not match the model (missing {missing[:3]}, "
                        f"unexpected {sorted(unexpected)[:3]}): the checkpoint is incomplete")
    model.tie_weights()
    return model


def load_gptq_lazy(folder: Path, config: dict, dtype: torch.dtype, device: str,
                   trust_remote_code: bool) -> tuple[torch.nn.Module, LazyBlocks] | None:
    """A GPTQ checkpoint with its decoder blocks left on disk (packed ones included), read one at
    a time through the returned :class:`LazyBlocks`; None for a checkpoint written in another
    reader's layout (read whole)."""
    qc = config["quantization_config"]
    bits = _bits(folder, qc)
    shards = sorted(folder.glob("*.safetensors"))
    check_safetensors(shards)
    index = SafetensorsIndex(shards)
    if read_layout(config.get("model_type"), index.entries) is not None:
        return None
    model, arch = _skeleton(folder, dtype, trust_remote_code, empty=True)
    check_block_fits(folder, index, arch, dtype, device)
    found = {arch.from_disk(k): (e.shape, e.dtype) for k, e in index.entries.items()}
    _install_packed(folder, qc, bits, model, arch, found, None, device="meta")
    return load_outside_blocks(folder, model, index, arch, dtype, device)


def _check_rules(folder: Path, qc: dict, model: torch.nn.Module, arch: ArchSpec, packed: set[str],
                 layout: Layout | None) -> None:
    """The config's module rules (``dynamic``, ``modules_in_block_to_quantize``) must say what the
    safetensors hold, or other loaders would read this checkpoint wrongly."""
    layers = arch.layers + "."
    for name, mod in model.named_modules():
        if not (isinstance(mod, torch.nn.Linear) and name.startswith(layers)):
            continue
        disk = arch.to_disk(name)  # the rules name modules as the checkpoint does
        said = packed_per_config(qc, layout.name(disk)[0] if layout else disk)
        if said is None or said == (name in packed):
            continue
        held = "packed" if name in packed else "full-precision"
        raise UserError(f"{folder}: {name} holds {held} weights but quantization_config's module rules say "
                        f"{'packed' if said else 'full precision'}: other loaders would misread it; "
                        "fix `dynamic`/`modules_in_block_to_quantize` in config.json")
