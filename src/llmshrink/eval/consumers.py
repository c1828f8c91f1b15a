"""The tools people run our outputs in, as a registry: each loads a folder or a GGUF file the way
its own documentation says, and gives logits for token ids.

:mod:`llmshrink.eval.check` drives them (``llmshrink check``); a consumer that is not installed
in the current environment is reported as such, never faked. Each consumer also knows the usage
snippet a model card shows for it.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

# What an output is, for the consumers: a plain transformers folder, a GPTQ checkpoint, a GGUF file.
KINDS = ("plain", "gptq", "gguf")

Logits = Callable[[torch.Tensor], torch.Tensor]  # ids [1, n] -> logits [1, n, vocab]


def kind_of(path: Path) -> str:
    if path.is_file():
        return "gguf"
    qc = json.loads((path / "config.json").read_text()).get("quantization_config") or {}
    return "gptq" if qc.get("quant_method") == "gptq" else "plain"


@dataclass(frozen=True)
class Consumer:
    name: str
    kinds: tuple[str, ...]  # what it loads
    needs: tuple[str, ...]  # import names it needs (for a kind: see ``needs_for``)
    load: Callable[[Path, str], Logits]
    snippet: Callable[[str, str], str]  # (folder or file as the user names it, kind) -> code
    gptq_needs: tuple[str, ...] = ()
    install: str = ""  # how to get it, where ``pip install <import names>`` is not the way

    def missing(self, kind: str) -> list[str]:
        needs = self.needs + (self.gptq_needs if kind == "gptq" else ())
        return [m for m in needs if importlib.util.find_spec(m) is None]

    def how_to_install(self, kind: str) -> str:
        return self.install or f"pip install {' '.join(self.missing(kind))}"


def _transformers(path: Path, kind: str) -> Logits:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, device_map="cpu").eval()
    return lambda ids: model(ids).logits.float()


def _gptqmodel(path: Path, kind: str) -> Logits:
    from gptqmodel import GPTQModel

    model = GPTQModel.load(str(path), device="cpu")
    return lambda ids: model.model(input_ids=ids).logits.float()


def _llama_cpp(path: Path, kind: str) -> Logits:
    from .llamacpp import load_llamacpp

    model = load_llamacpp(path, n_ctx=256)
    return lambda ids: model.model(ids).logits


def _vllm(path: Path, kind: str) -> Logits:
    """vLLM's offline engine as its docs start it (``LLM(model=...)``, its own dtype and kernels),
    asked for the raw logits of every vocabulary entry at every position (prompt logprobs)."""
    from vllm import LLM, SamplingParams

    vocab = int(json.loads((path / "config.json").read_text())["vocab_size"])
    # On CPU, gpu_memory_utilization is the share of the NUMA node's memory vLLM reserves (default
    # 0.92, refused when other processes hold more than 8 %); a 256-token check needs little.
    memory = {} if torch.cuda.is_available() else {"gpu_memory_utilization": 0.25}
    llm = LLM(model=str(path), max_model_len=256, max_logprobs=-1, logprobs_mode="raw_logits", enforce_eager=True,
              **memory)
    full = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=vocab, logprobs=vocab)
    greedy = SamplingParams(max_tokens=1, temperature=0.0)
    first = True

    def logits_of(ids: torch.Tensor) -> torch.Tensor:
        """Every score on the first call (the one compared); then vLLM's own greedy token, as
        the only finite entry of the last row (all the continuation needs, at 1/8 the cost)."""
        nonlocal first
        prompt = [{"prompt_token_ids": ids[0].tolist()}]
        if not first:
            token = llm.generate(prompt, greedy, use_tqdm=False)[0].outputs[0].token_ids[0]
            logits = torch.full((1, ids.shape[1], vocab), float("-inf"))
            logits[0, -1, token] = 0.0
            return logits
        first = False
        out = llm.generate(prompt, full, use_tqdm=False)[0]
        rows = [*out.prompt_logprobs[1:], out.outputs[0].logprobs[0]]  # row i: the scores after token i
        logits = torch.full((1, len(rows), vocab), float("-inf"))
        for i, row in enumerate(rows):
            logits[0, i, list(row)] = torch.tensor([lp.logprob for lp in row.values()])
        return logits

    return logits_of


def _snippet_transformers(name: str, kind: str) -> str:
    extra = "# pip install gptqmodel optimum  (GPTQ kernels)\n" if kind == "gptq" else ""
    return (f"{extra}from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"model = AutoModelForCausalLM.from_pretrained(\"{name}\", device_map=\"auto\")\n"
            f"tokenizer = AutoTokenizer.from_pretrained(\"{name}\")")


def _snippet_gptqmodel(name: str, kind: str) -> str:
    return ("from gptqmodel import GPTQModel\n"
            f"model = GPTQModel.load(\"{name}\")\n"
            "print(model.tokenizer.decode(model.generate(\"The king said\")[0]))")


def _snippet_vllm(name: str, kind: str) -> str:
    return ("from vllm import LLM, SamplingParams\n"
            f"llm = LLM(model=\"{name}\")\n"
            "print(llm.generate(\"The king said\", SamplingParams(max_tokens=32))[0].outputs[0].text)")


def _snippet_llama_cpp(name: str, kind: str) -> str:
    return (f"llama-cli -m {name} -p \"The king said\" -n 32\n"
            f"# or in Python: llama_cpp.Llama(\"{name}\")")


CONSUMERS: dict[str, Consumer] = {c.name: c for c in (
    Consumer("transformers", ("plain", "gptq"), ("transformers",), _transformers, _snippet_transformers,
             gptq_needs=("gptqmodel", "optimum")),
    Consumer("gptqmodel", ("gptq",), ("gptqmodel",), _gptqmodel, _snippet_gptqmodel),
    Consumer("vllm", ("plain", "gptq"), ("vllm",), _vllm, _snippet_vllm,
             install="pip install vllm (GPU), or vLLM's CPU build in its own environment: bash bench/peers/vllm_setup.sh"),
    Consumer("llama.cpp", ("gguf",), ("llama_cpp",), _llama_cpp, _snippet_llama_cpp),
)}
