"""MODEL argument -> (model, tokenizer).

A MODEL is a Hugging Face model folder, a ``.gguf`` file, or a registered alias
(``smollm2-135m``). GGUF files and aliases are converted once to a safetensors folder in the
cache; every later load reads that folder. Weights are read with safetensors only (never
unpickled), and remote code runs only when the caller asks for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from ..config import Config
from ..errors import UserError
from ..memory import available_memory
from ..paths import cache_dir, cache_subdir
from .arch import ArchSpec, arch_for, arch_of, prepare_modules
from .convert import convert_gguf, inspect_gguf, is_converted, is_gguf
from .files import check_tensors, find_shards, fingerprint, list_shards
from .gptq_checkpoint import load_gptq
from .health import check_weights
from .zoo import ALIASES, get_alias

if TYPE_CHECKING:
    from .lazy import LazyBlocks

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadConfig(Config):
    """How a command loads its model (every command that loads one takes these)."""

    kind: ClassVar[str] = "load"
    device: str = field(default="cpu", metadata={"help": "cpu or cuda[:N]"})
    dtype: str = field(default="float32", metadata={"help": "dtype of the float weights", "choices": tuple(DTYPES)})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow a model folder's own Python code to "
                                                                     "run"})

    def __post_init__(self) -> None:
        self.one_of("dtype", DTYPES, "dtype")

    def load(self, spec: str, **kw) -> LoadedModel:
        return load_model(spec, dtype=self.dtype, device=self.device, trust_remote_code=self.trust_remote_code, **kw)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    path: Path  # the Hugging Face folder the weights came from
    name: str  # the MODEL argument as given
    arch: ArchSpec
    seconds: float
    blocks: LazyBlocks | None = None  # set when the decoder blocks are read on demand (lazy_blocks=True)

    @property
    def num_parameters(self) -> int:
        # Tied weights (embedding == lm_head) are counted once; packed layers count their weights,
        # which are buffers (qweight) rather than parameters.
        dense = sum(p.numel() for p in {id(p): p for p in self.model.parameters()}.values())
        packed = sum(m.in_features * m.out_features for m in self.model.modules() if hasattr(m, "qweight"))
        return dense + packed

    @property
    def size_on_disk(self) -> int:
        return weights_size(self.path)

    @property
    def identity(self) -> dict:
        """What a resume point records of the model: its folder and its weights' fingerprint."""
        return {"model": str(self.path.resolve()), "weights": fingerprint(self.path)}

    @property
    def sources(self) -> tuple[Path, ...]:
        """What the model was read from (the folder, and the file or folder named), which no
        output may replace or sit inside."""
        named = Path(self.name).expanduser()
        return (self.path, named) if named.exists() else (self.path,)


def weights_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def resolve_model_dir(spec: str) -> Path:
    """Turn a MODEL argument into a local Hugging Face folder, converting GGUF once."""
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_dir():
            return path
        if path.suffix.lower() == ".gguf" or is_gguf(path):
            return _cached_conversion(path)
        raise UserError(f"{spec} is a file but not a .gguf model: give a model folder or a .gguf file")
    if spec in ALIASES:
        alias = get_alias(spec)
        out = cache_subdir("models") / alias.name
        if is_converted(out):
            return out
        gguf = alias.gguf_path()
        alias.verify(gguf)
        return convert_gguf(gguf, out, source={"alias": alias.name})
    if "/" in spec or "\\" in spec or spec.lower().endswith(".gguf"):
        raise UserError(f"no such file or folder: {spec}: check the path")
    get_alias(spec)  # raises the unknown-alias error listing the known ones
    raise AssertionError("unreachable")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def check_model(spec: str) -> dict | None:
    """What can be checked of a MODEL argument without loading it (before any work): the path or
    alias exists; a folder has a readable config.json of a supported architecture, readable
    safetensors headers and a tokenizer; a file is a readable GGUF. Returns the folder's config
    (None for a GGUF file or an alias not converted yet)."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf" and not is_gguf(path):
            raise UserError(f"{spec} is a file but not a .gguf model: give a model folder or a .gguf file")
        inspect_gguf(path)
        return None
    if not path.is_dir():
        if spec not in ALIASES:
            resolve_model_dir(spec)  # raises the missing-path or unknown-alias error
        path = cache_dir() / "models" / get_alias(spec).name
        if not is_converted(path):
            return None
    config = read_config(path)
    arch_for(config.get("model_type"))
    find_shards(path)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"{path} has no tokenizer ({', '.join(TOKENIZER_FILES[:2])}): copy the tokenizer files of "
                        "its model into it")
    return config


def _cached_conversion(gguf: Path) -> Path:
    st = gguf.stat()
    key = f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    out = cache_subdir("models") / f"gguf-{gguf.stem}-{digest}"
    if is_converted(out):
        return out
    return convert_gguf(gguf, out, source={"size": st.st_size})


def read_config(folder: Path) -> dict:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{folder} has no config.json: give a Hugging Face model folder, a .gguf file or an alias")
    try:
        return json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{cfg_path} is not valid JSON ({exc}): restore the file") from exc


# quant_method in config.json -> loader for checkpoints that need their own modules.
# Plain checkpoints (no quantization_config) use transformers directly.
CheckpointLoader = Callable[[Path, dict, torch.dtype, bool], torch.nn.Module]
CHECKPOINT_LOADERS: dict[str, CheckpointLoader] = {"gptq": load_gptq}


def _load_plain(folder: Path, config: dict, dtype: torch.dtype, trust_remote_code: bool) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    from .lazy import SafetensorsIndex

    index = SafetensorsIndex(list_shards(folder))
    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(
                AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code),
                trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{folder}/config.json does not describe a model transformers can build ({exc}): "
                        "restore it") from exc
    arch = arch_of(skeleton)
    check_tensors({arch.to_disk(k): v for k, v in prepare_modules(skeleton, arch).state_dict().items()},
                  {n: (e.shape, e.dtype.is_floating_point) for n, e in index.entries.items()}, folder)
    del skeleton
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"could not load weights from {folder} ({exc}): the folder may be incomplete") from exc
    return prepare_modules(model, arch)


def check_fits(folder: Path, dtype: torch.dtype, device: str) -> None:
    """Refuse, before reading any weight, a model whose tensors (floating ones in ``dtype``)
    cannot fit in the memory ``device`` has free."""
    from .lazy import SafetensorsIndex

    need = sum(e.loaded_bytes(dtype) for e in SafetensorsIndex(list_shards(folder)).entries.values())
    free = available_memory(device)
    if free is not None and need > free:
        raise UserError(f"{folder} needs {need / 2**30:.1f} GiB as {str(dtype).removeprefix('torch.')} but {device} "
                        f"has {free / 2**30:.1f} GiB free: the model is too large for this device; use a smaller "
                        "--dtype (bfloat16), a quantized checkpoint, or another --device")


def load_tokenizer(folder: Path, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load a tokenizer from {folder} ({exc}): copy the tokenizer files into it") from exc


def _load_lazy(folder: Path, config: dict, method: str | None, arch, dtype: torch.dtype, device: str,
               trust_remote_code: bool):
    """(model, LazyBlocks) with the decoder blocks left on disk (a plain or, ``method`` gptq, a GPTQ
    checkpoint); None where the checkpoint is read whole (GPTQ in another reader's layout)."""
    if method is None:
        from .lazy import load_lazy

        return load_lazy(folder, list_shards(folder), arch, dtype, device, trust_remote_code)
    from .gptq_checkpoint import load_gptq_lazy

    return load_gptq_lazy(folder, config, dtype, device, trust_remote_code)


def load_model(
    spec: str,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    lazy_blocks: bool = False,
) -> LoadedModel:
    """Load MODEL (folder, .gguf or alias) for inference, on ``device``, in eval mode.

    ``lazy_blocks``: leave the decoder blocks on disk (parameters on ``meta``) for a job that
    reads them one at a time through ``LoadedModel.blocks`` (plain and GPTQ checkpoints; a GPTQ
    checkpoint in another reader's layout is read whole, ``blocks`` None)."""
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but no CUDA device is available: use --device cpu")
    t0 = time.perf_counter()
    folder = resolve_model_dir(spec)
    config = read_config(folder)
    arch = arch_for(config.get("model_type"), config)
    method = (config.get("quantization_config") or {}).get("quant_method")
    if method is None:
        loader = _load_plain
    elif method in CHECKPOINT_LOADERS:
        loader = CHECKPOINT_LOADERS[method]
    else:
        raise UserError(f"{folder} is a {method!r}-quantized checkpoint, which llmshrink cannot load: give the original "
                        "model or a GPTQ checkpoint")
    blocks = lazy = None
    if lazy_blocks:
        lazy = _load_lazy(folder, config, method, arch, DTYPES[dtype], device, trust_remote_code)
    if lazy is not None:
        model, blocks = lazy
    else:
        check_fits(folder, DTYPES[dtype], device)
        model = loader(folder, config, DTYPES[dtype], trust_remote_code)
        model.to(device).eval()
        check_weights(model, str(spec))
    tokenizer = load_tokenizer(folder, trust_remote_code=trust_remote_code)
    seconds = time.perf_counter() - t0
    log.info("loaded %s from %s in %.1f s", spec, folder, seconds)
    return LoadedModel(model, tokenizer, folder, str(spec), arch, seconds, blocks)
