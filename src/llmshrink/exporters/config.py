"""Settings of the exporters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..config import Config
from ..models.gptq_layout import LAYOUTS
from ..quant.config import GRID_METHODS, QuantConfig
from .ggml import EXPORT_TYPES, ggml_type
from .gguf_mix import MIXES, Mix

FILE_TYPES = (*EXPORT_TYPES, *MIXES)


@dataclass
class GGUFConfig(Config):
    """GGUF export: the tensor type, and how quantized types are solved."""

    kind: ClassVar[str] = "export"
    type: str = field(default="q4_0", metadata={"help": "tensor type of the decoder blocks' linear layers ("
                                                        + ", ".join(EXPORT_TYPES) + "), or a llama.cpp K-quant "
                                                        "mix, each tensor typed as llama-quantize does it ("
                                                        + ", ".join(MIXES) + ")"})
    embed_type: str | None = field(default=None, metadata={"help": "type of token_embd/output; default q8_0 for "
                                                                   "quantized types, else the type itself"})
    method: str = field(default="gptq", metadata={"help": "gptq: solve on the type's grid; gptaq: the same against the "
                                                          "original model's outputs; rtn: round to nearest",
                                                  "choices": GRID_METHODS})
    act_order: bool = field(default=True, metadata={"help": "GPTQ in order of decreasing Hessian diagonal"})
    damp: float = field(default=0.01, metadata={"help": "GPTQ damping, a fraction of the mean Hessian diagonal"})
    mse: bool = field(default=True, metadata={"help": "search each block's scale for the lowest error"})

    def __post_init__(self) -> None:
        self.type = str(self.type).lower()
        if self.type not in MIXES:
            self.check(self.type in EXPORT_TYPES, "type",
                       f"unsupported GGUF type {self.type!r}: use one of {', '.join(FILE_TYPES)}")
        if self.embed_type is not None:
            ggml_type(self.embed_type, internal=True)
        self.one_of("method", GRID_METHODS, "method")
        self.check(0 < self.damp < 1, "damp", f"must be in (0, 1), got {self.damp!r}")

    @property
    def mix(self) -> Mix | None:
        """The llama.cpp mix ``type`` names, if it names one."""
        return MIXES.get(self.type)

    def quant_config(self, type_name: str | None = None) -> QuantConfig | None:
        """The GPTQ/RTN settings that solve on the grid of ``type_name`` (default: ``type``, or the
        mix's base type); None for float types."""
        name = type_name or (self.mix.base if self.mix else self.type)
        return ggml_type(name, internal=True).quant_config(self.method, act_order=self.act_order, damp=self.damp,
                                                           mse=self.mse)


@dataclass
class HFGPTQConfig(Config):
    """Hugging Face GPTQ export: whose module names the checkpoint uses."""

    kind: ClassVar[str] = "export"
    layout: str = field(default="transformers", metadata={
        "help": "transformers: the architecture's own names on disk (transformers, vLLM, llmshrink); gptqmodel: "
                "the names GPTQModel's module trees look for (Mixtral's experts as mlp.experts.E.gate_proj, "
                "Phi-3's gate_up_proj split in two); llmshrink reads both", "choices": tuple(LAYOUTS)})

    def __post_init__(self) -> None:
        self.one_of("layout", LAYOUTS, "layout")
