"""Run GGUF files through llama.cpp itself (llama-cpp-python), for evaluation and checks.

:func:`load_llamacpp` returns an object shaped like :class:`~llmshrink.models.load.LoadedModel`
(a model whose forward gives logits, a tokenizer with the transformers call signature), so
``llmshrink eval FILE.gguf`` scores exactly the same windows as for any other model, with
llama.cpp's tokenizer and llama.cpp's logits. llama-cpp-python is optional:
``pip install llama-cpp-python`` (it builds llama.cpp from source).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..errors import UserError

log = logging.getLogger(__name__)


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise UserError("running GGUF files through llama.cpp needs llama-cpp-python: "
                        "pip install llama-cpp-python (or evaluate with --backend transformers)") from None
    return llama_cpp


class LlamaCppLM(torch.nn.Module):
    """``forward(input_ids)`` -> ``.logits`` [batch, length, vocab] from llama.cpp, one row at a time."""

    def __init__(self, llm) -> None:
        super().__init__()
        self.llm = llm

    def forward(self, input_ids: torch.Tensor, **_ignored) -> SimpleNamespace:
        rows = []
        for ids in input_ids.tolist():
            if len(ids) > self.llm.n_ctx():
                raise UserError(f"a window of {len(ids)} tokens exceeds the llama.cpp context of {self.llm.n_ctx()}")
            self.llm.reset()
            self.llm.eval(ids)
            rows.append(torch.from_numpy(np.array(self.llm.scores[: len(ids)], dtype=np.float32)))
        return SimpleNamespace(logits=torch.stack(rows))

    @torch.no_grad()
    def greedy(self, prompt: list[int], new_tokens: int, *, stop_at_eos: bool = True) -> list[int]:
        """Greedy continuation: argmax of llama.cpp's logits, token by token."""
        out: list[int] = []
        eos = self.llm.token_eos()
        for tok in self.llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
            out.append(int(tok))
            if len(out) >= new_tokens or (stop_at_eos and tok == eos):
                break
        return out


class LlamaCppTokenizer:
    """llama.cpp's tokenizer behind the transformers call signature that llmshrink's data code uses."""

    def __init__(self, llm) -> None:
        self.llm = llm
        self.bos_token_id = llm.token_bos() if llm.token_bos() >= 0 else None
        self.eos_token_id = llm.token_eos() if llm.token_eos() >= 0 else None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        # special=True: special-token text becomes the special token, as in transformers
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=True)

    def decode(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def __call__(self, text, add_special_tokens: bool = True, **_ignored) -> dict:
        if isinstance(text, str):
            return {"input_ids": self.encode(text, add_special_tokens)}
        return {"input_ids": [self.encode(t, add_special_tokens) for t in text]}


@dataclass
class LlamaCppModel:
    """What evaluation needs of a loaded model, for a GGUF file run by llama.cpp."""

    model: LlamaCppLM
    tokenizer: LlamaCppTokenizer
    path: Path
    name: str
    seconds: float
    num_parameters: int
    size_on_disk: int


def cpu_has_amx(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU reports Intel AMX int8 tiles (Sapphire Rapids and later)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    return any("amx_int8" in line.split() for line in text.splitlines() if line.startswith("flags"))


@contextlib.contextmanager
def _model_params(use_extra_bufts: bool):
    """``llama_cpp.Llama`` builds its model parameters from ``llama_model_default_params()`` and loads
    the file in its constructor, with no argument for ``use_extra_bufts``; set it for that one call."""
    import llama_cpp.llama_cpp as low  # the module ``llama_cpp.llama`` reads its defaults from

    default = low.llama_model_default_params
    if use_extra_bufts or not hasattr(low.llama_model_params, "use_extra_bufts"):  # older llama.cpp: no field
        yield
        return

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = default


def make_llama(path: str | Path, *, extra_buffers: bool | None = None, **kwargs):
    """``llama_cpp.Llama(model_path=path, **kwargs)`` on the CPU.

    ``extra_buffers``: whether llama.cpp may move weights to its extra CPU buffer types (the AMX and
    repacked-GEMM layouts). ``None`` (default): yes, except on CPUs with AMX, where llama.cpp's AMX
    path crashes on Q4_0/Q4_1/Q8_0 models (segmentation fault in ``llama_decode``, seen with
    llama-cpp-python 0.3.36 on both SmolLM2-135M and tiny test models); there the plain CPU path runs.
    """
    llama_cpp = _llama_cpp()
    if extra_buffers is None:
        extra_buffers = not cpu_has_amx()
        if not extra_buffers:
            log.info("CPU has AMX: llama.cpp runs without its extra buffer types (its AMX path crashes)")
    with _model_params(extra_buffers):
        return llama_cpp.Llama(model_path=str(path), n_gpu_layers=0, **kwargs)


def load_llamacpp(path: str | Path, *, n_ctx: int = 2048, n_threads: int | None = None,
                  extra_buffers: bool | None = None) -> LlamaCppModel:
    """Load a GGUF file with llama.cpp (CPU), keeping the logits of every position.

    ``extra_buffers``: see :func:`make_llama` (default: off on AMX CPUs, where llama.cpp crashes)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}: check the path")
    from ..models.convert import inspect_gguf

    llama_cpp = _llama_cpp()
    t0 = time.perf_counter()
    inspect_gguf(path)  # a truncated or corrupt file: the reader's clear error, not llama.cpp's
    try:
        llm = make_llama(path, extra_buffers=extra_buffers, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                         logits_all=True, n_threads=n_threads or os.cpu_count(), verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"llama.cpp could not load {path} ({exc}): is it a complete GGUF model file?") from exc
    n_params = int(llama_cpp.llama_model_n_params(llm.model)) if hasattr(llama_cpp, "llama_model_n_params") else 0
    return LlamaCppModel(LlamaCppLM(llm), LlamaCppTokenizer(llm), path, path.name, time.perf_counter() - t0,
                         n_params, path.stat().st_size)
