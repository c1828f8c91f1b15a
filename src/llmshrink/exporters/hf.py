"""Hugging Face folders: plain checkpoints, and GPTQ checkpoints (``checkpoint_format: gptq``).

Quantized linear layers are :class:`QuantLinear` modules holding ``qweight``, ``qzeros``,
``scales`` and ``g_idx``; everything else stays in full precision, so a checkpoint whose first K
blocks alone are quantized is an ordinary mixed checkpoint. ``config.json`` gains a
``quantization_config`` describing the packed layers. Every folder appears atomically.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import UserError
from ..models.arch import ArchSpec, arch_of
from ..models.files import StoredTensor, metadata_of, stored_tensors, write_safetensors
from ..models.gptq_layout import Layout
from ..models.gptq_rules import bits_rules, skip_rules
from ..models.load import DTYPES
from ..paths import atomic_dir, output_path
from ..quant.driver import QuantizeReport
from ..quant.pack import packing_multiple
from ..quant.qlinear import QuantLinear

# A file of the output folder: its text, or a function that writes it (given its path).
Extra = str | Callable[[Path], None]


def check_packable(model: torch.nn.Module, arch: ArchSpec, todo: range, lm_head: bool, bits: int, *,
                   widths: dict[str, int] | None = None) -> None:
    """Refuse, before hours of quantization, layers that the GPTQ layout cannot store at ``bits``
    (or at their own width in ``widths``, by full name)."""
    widths = widths or {}
    layers = arch.blocks(model)
    mods = [(f"{arch.layers}.{i}.{n}", layers[i].get_submodule(n)) for i in todo for n in arch.linear_names]
    if lm_head:
        mods.append((arch.lm_head, model.get_submodule(arch.lm_head)))
    for name, mod in mods:
        per = packing_multiple(widths.get(name, bits))
        if mod.in_features % per or mod.out_features % per:
            hint = "leave --lm-head off" if name == arch.lm_head else "choose other bits"
            raise UserError(f"{name} is {mod.out_features}x{mod.in_features}: {widths.get(name, bits)}-bit GPTQ packing needs both "
                            f"dimensions to be multiples of {per}; {hint}")


def pack_model(model: torch.nn.Module, report: QuantizeReport) -> None:
    """Replace each quantized ``nn.Linear`` by its packed :class:`QuantLinear`, in place (layers
    packed during quantization are already)."""
    for name, res in report.results.items():
        model.set_submodule(name, QuantLinear.from_result(model.get_submodule(name), res,
                                                          report.layer_config(name).bits))


def quantization_config(scheme: dict, model: torch.nn.Module, layout: Layout | None = None) -> dict:
    """``config.json``'s ``quantization_config`` for packed layers described by ``scheme``
    (:attr:`QuantizeReport.scheme`), with ``dynamic`` rules leaving ``model``'s other block
    linears in full precision and ``+:`` rules giving its packed layers of another width than
    ``scheme``'s ``bits`` their own (see :mod:`llmshrink.models.gptq_rules`); modules named as
    ``layout`` names them, if given."""
    arch = arch_of(model)  # module names as the checkpoint spells them (Mixtral's block_sparse_moe)
    name = layout.name if layout is not None else lambda n: [n]
    linears = [m for i in range(len(arch.blocks(model))) for n in arch.linear_names
               for m in name(arch.to_disk(f"{arch.layers}.{i}.{n}"))]
    packed = [m for n in scheme["modules_in_block_to_quantize"][0] for m in name(arch.to_disk(n))]
    rules = skip_rules(packed, linears, arch.layers)
    widths = {m: mod.bits for n, mod in model.named_modules() if isinstance(mod, QuantLinear)
              for m in name(arch.to_disk(n))}
    rules.update(bits_rules(widths, scheme["bits"]))
    scheme = {**scheme, "modules_in_block_to_quantize": [packed]}
    return {"quant_method": "gptq", "checkpoint_format": "gptq", **scheme, **({"dynamic": rules} if rules else {})}


def release_dtype(choice: str, source: Path | None, packed: bool) -> torch.dtype:
    """The dtype of a folder's full-precision weights: ``choice``, or for ``auto`` the source
    folder's own 16-bit dtype, else (a float32 source: a GGUF conversion) float16 beside packed GPTQ
    layers (what GPTQ kernels compute in) and bfloat16 in a plain model (the range of float32)."""
    if choice != "auto":
        return DTYPES[choice]
    config = json.loads((source / "config.json").read_text()) if source and (source / "config.json").is_file() else {}
    own = config.get("dtype") or config.get("torch_dtype")
    if own in ("float16", "bfloat16"):
        return DTYPES[own]
    return torch.float16 if packed else torch.bfloat16


def _packed_names(model: torch.nn.Module) -> set[str]:
    return {name for name, m in model.named_modules() if isinstance(m, QuantLinear)}


def _state_in(model: torch.nn.Module, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """``model``'s state with its float tensors in ``dtype``; packed layers' tensors as they are
    (GPTQ scales stay float16); a tied tensor once, under its first name (the cast copies would
    otherwise be written twice: a tied lm_head is the embedding); tensors on ``meta`` (spilled to
    files) left out."""
    packed = _packed_names(model)
    state, seen = {}, set()
    for k, v in model.state_dict().items():
        if v.is_meta:  # spilled to a file, saved from there
            continue
        if v.numel() and (v.data_ptr(), v.shape) in seen:
            continue
        seen.add((v.data_ptr(), v.shape))
        cast = dtype is not None and v.is_floating_point() and k.rpartition(".")[0] not in packed
        state[k] = v.to(dtype) if cast else v
    return state


def merge_weights(folder: Path, stored: dict[str, StoredTensor], max_shard_size: int = 50 * 10**9) -> None:
    """Rewrite the weight files ``save_pretrained`` wrote into ``folder`` with the ``stored``
    tensors added, each tensor streamed from its file: one ``model.safetensors``, or shards of at
    most ``max_shard_size`` bytes with an index, as transformers names them."""
    index = folder / "model.safetensors.index.json"
    written = sorted(folder.glob("*.safetensors"))
    tensors = {name: t for shard in written for name, t in stored_tensors(shard).items()}
    clash = sorted(set(tensors) & set(stored))
    if clash:
        raise ValueError(f"{clash[0]} is both in memory and spilled")
    tensors.update(stored)
    meta = metadata_of(written[0]) if written else {"format": "pt"}
    shards: list[dict[str, StoredTensor]] = [{}]
    size = 0
    for name in tensors:  # in order: the saved files' tensors, then the spilled ones
        n = tensors[name].nbytes
        if shards[-1] and size + n > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][name], size = tensors[name], size + n
    names = ["model.safetensors"] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards, strict=True):
        write_safetensors(folder / f".{name}.merging", shard, meta)
    for old in written:
        old.unlink()
    index.unlink(missing_ok=True)
    for name in names:
        (folder / f".{name}.merging").rename(folder / name)
    if len(shards) > 1:
        weight_map = {t: name for name, shard in zip(names, shards, strict=True) for t in shard}
        total = sum(t.nbytes for t in tensors.values())
        index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
                                    indent=2) + "\n")


def round_to(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Round ``model``'s full-precision float parameters to ``dtype`` in place (keeping their own
    dtype): scored now, the model is the one :func:`save_folder` will write in ``dtype``."""
    packed = _packed_names(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.is_floating_point() and name.rpartition(".")[0] not in packed:
                p.copy_(p.to(dtype))


def save_folder(model: torch.nn.Module, tokenizer, out: Path, *, quantization_config: dict | None = None,
                files: dict[str, Extra] | None = None, copy_from: Path | None = None,
                copy: tuple[str, ...] = (), dtype: torch.dtype | None = None,
                after: Callable[[Path], None] | None = None, spilled: dict[str, StoredTensor] | None = None) -> Path:
    """Write ``model`` (safetensors, float tensors in ``dtype`` if given) and ``tokenizer`` into the
    folder ``out``, atomically, with ``quantization_config`` in its ``config.json``, the extra
    ``files``, and the files named in ``copy`` that ``copy_from`` holds; ``after`` may then rewrite
    the folder before it appears. ``spilled``: tensors of ``model`` left on ``meta`` whose bytes
    are in files (full names), copied from there into the weight files."""
    out = output_path(out)
    with atomic_dir(out) as tmp:
        state = _state_in(model, dtype) if dtype is not None or spilled else None
        model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        if spilled:
            arch = arch_of(model)
            merge_weights(tmp, {arch.to_disk(k): v for k, v in spilled.items()})
        tokenizer.save_pretrained(tmp)
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        if quantization_config is not None:
            cfg["quantization_config"] = quantization_config
        if dtype is not None:
            cfg["dtype"] = str(dtype).removeprefix("torch.")
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        for name in copy:
            if copy_from is not None and (copy_from / name).is_file():
                shutil.copy(copy_from / name, tmp / name)
        for name, content in (files or {}).items():
            if isinstance(content, str):
                (tmp / name).write_text(content)
            else:
                content(tmp / name)
        if after is not None:
            after(tmp)
    return out


def relayout(folder: Path, layout: Layout) -> None:
    """Rewrite the safetensors of ``folder`` (a GPTQ checkpoint in llmshrink's names) in ``layout``,
    shard by shard, and the shard index's names with them."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    index = folder / "model.safetensors.index.json"
    weight_map = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(shard, "pt") as f:
            meta = f.metadata()
        state = layout.write(load_file(shard))
        save_file(state, shard, metadata=meta)
        weight_map.update(dict.fromkeys(state, shard.name))
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = dict(sorted(weight_map.items()))
        index.write_text(json.dumps(data, indent=2) + "\n")


def save_quantized(model: torch.nn.Module, tokenizer, report: QuantizeReport, out_dir: Path, *,
                   extra_files: dict[str, Extra] | None = None, dtype: torch.dtype | None = None,
                   spilled: dict[str, StoredTensor] | None = None) -> Path:
    """The ``hf-gptq`` exporter: pack the driver's result into the model and write the checkpoint
    (``spilled``: packed tensors already in files, see :func:`save_folder`)."""
    if report.config.grid != "zero":
        raise UserError(f"HF GPTQ checkpoints store scale/zero-point grids, not {report.config.grid!r} grids: "
                        "quantize with grid=zero, or export to GGUF")
    output_path(out_dir)
    pack_model(model, report)
    return save_folder(model, tokenizer, out_dir, quantization_config=quantization_config(report.scheme, model),
                       files=extra_files, dtype=dtype, spilled=spilled)
