"""GGUF -> Hugging Face safetensors folder, once, into the cache.

transformers can read a GGUF (it dequantizes every tensor, which takes ~20 s for a 135M model),
but a model loaded that way carries a ``quantization_config`` of ``quant_method: gguf`` and cannot
be ``save_pretrained`` as a plain model. We rebuild the model from its config on the meta device,
assign the dequantized state dict, and save safetensors plus the tokenizer (chat template kept).
The folder appears atomically.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from ..errors import UserError
from ..paths import atomic_dir
from .arch import arch_for
from .pretokenizers import restore, spec_for

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
# general.architecture in a GGUF -> model_type in transformers, for the architectures we handle
GGUF_ARCHES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
               "gemma3": "gemma3_text", "phi3": "phi3", "qwen3moe": "qwen3_moe", "qwen2moe": "qwen2_moe"}
MARKER = "llmshrink.json"
# Bumped when a conversion's output changes: cached folders of older versions are converted again.
# 2: the tokenizer splits text as the GGUF's pre-tokenizer says; the source's general.* kept.
CONVERT_VERSION = 2
# general.* keys that describe the file rather than the model: not carried into the marker.
_FILE_KEYS = {"general.architecture", "general.file_type", "general.quantization_version", "general.alignment"}


def is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


def inspect_gguf(path: Path) -> dict:
    """Read a GGUF's header and tensor table; a clear error if it is truncated or corrupt."""
    from gguf import GGUFReader

    if not is_gguf(path):
        raise UserError(f"{path} is not a GGUF file (no GGUF magic): give a .gguf model file or a model folder")
    try:
        reader = GGUFReader(str(path))
        arch = _field_str(reader, "general.architecture")
        # Touch every tensor's extent: a truncated file fails here rather than deep in a loader.
        size = path.stat().st_size
        for t in reader.tensors:
            if t.data_offset + t.n_bytes > size:
                raise ValueError(f"tensor {t.name} runs past the end of the file")
        n_tensors = len(reader.tensors)
        general = {k: _field_value(f) for k, f in reader.fields.items()
                   if k.startswith("general.") and k not in _FILE_KEYS}
        pre = _field_str(reader, "tokenizer.ggml.pre")
    except UserError:
        raise
    except Exception as exc:  # the reader raises many kinds of errors on a damaged file
        raise UserError(
            f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc}); it may be truncated "
            f"or corrupt: download it again"
        ) from exc
    if arch not in GGUF_ARCHES:
        arch_for(arch)  # raises the standard unsupported-architecture error
    return {"architecture": arch, "tensors": n_tensors, "general": general, "tokenizer_pre": pre}


def _field_value(field):
    try:
        return field.contents()
    except Exception:  # a field type gguf-py cannot decode: not worth failing a load for
        return None


def is_converted(folder: Path) -> bool:
    """``folder`` holds a conversion of the current version."""
    try:
        return json.loads((folder / MARKER).read_text()).get("version", 1) >= CONVERT_VERSION
    except (OSError, ValueError):
        return False


def _field_str(reader, key: str) -> str | None:
    field = reader.fields.get(key)
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def convert_gguf(gguf_path: Path, out_dir: Path, *, source: dict | None = None) -> Path:
    """Write a plain safetensors Hugging Face folder for ``gguf_path`` at ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = inspect_gguf(gguf_path)
    t0 = time.perf_counter()
    log.info("converting %s to safetensors (once; later loads use the cache)", gguf_path.name)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), assign=True)
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    del loaded

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out_dir) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _restore_pre_tokenizer(tmp / "tokenizer.json", info["tokenizer_pre"])
        marker = {"converted_from": str(gguf_path), "version": CONVERT_VERSION, **info, **(source or {})}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2, default=str) + "\n")
    log.info("converted in %.1f s -> %s", time.perf_counter() - t0, out_dir)
    return out_dir


def _restore_pre_tokenizer(path: Path, name: str | None) -> None:
    """Make the saved tokenizer split text as the GGUF's ``tokenizer.ggml.pre`` says (llama.cpp
    and the model's own tokenizer do; transformers' GGUF reader writes GPT-2's split for all)."""
    if name is None or not path.is_file():
        return
    spec = json.loads(path.read_text(encoding="utf-8"))
    if restore(spec, name):
        path.write_text(json.dumps(spec, ensure_ascii=False, indent=2), encoding="utf-8")
        log.info("tokenizer: pre-tokenizer set to llama.cpp's %r, as the GGUF says", name)
    elif spec_for(name) is None:
        log.warning("the GGUF's pre-tokenizer %r is unknown to llmshrink: its tokenizer may split text "
                    "differently from llama.cpp's", name)
