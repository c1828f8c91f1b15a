"""The GGUF exporter: a LLaMA-family model (and the driver's solutions for its layers) as a GGUF
file that llama.cpp loads.

For the block-quantized types (Q4_0, Q4_1, Q8_0) the decoder blocks' linear layers come solved
by GPTQ on the type's own grid (32-column groups, fp16 scales, see :mod:`.ggml`; the job
``llmshrink.jobs.export`` runs the driver), and their codes are written into GGML blocks as
they are: no second rounding. Layers already packed by ``llmshrink quantize`` are carried over
exactly when their grid is the type's grid, and otherwise dequantized and rounded to the type
(with a warning). Embeddings and an untied lm_head are rounded to ``embed_type``; norms stay F32.

The file is written under a temporary name and renamed at the end.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch

from ..errors import UserError
from ..models.load import LoadedModel
from ..paths import atomic_file, output_path
from ..quant.config import QuantConfig
from ..quant.gptq import QuantResult
from ..quant.qlinear import QuantLinear
from .config import GGUFConfig
from .ggml import GGMLType, ggml_type, is_blockwise
from .gguf_meta import add_hparams, add_tokenizer, gguf_arch, read_vocab

log = logging.getLogger(__name__)


@dataclass
class GGUFReport:
    path: Path
    type: str
    embed_type: str
    method: str
    tensors: dict[str, int] = field(default_factory=dict)  # ggml type name -> tensor count
    solved: list[str] = field(default_factory=list)  # layers whose GPTQ/RTN codes were written as solved
    carried: list[str] = field(default_factory=list)  # packed layers carried over exactly
    requantized: list[str] = field(default_factory=list)  # packed layers dequantized and rounded again
    seconds: float = 0.0
    size: int = 0


def _rope_rows(out_features: int, n_head: int) -> torch.Tensor:
    """Row order llama.cpp's RoPE expects for q/k (pairs interleaved, as convert_hf_to_gguf permutes)."""
    return torch.arange(out_features).reshape(n_head, 2, out_features // n_head // 2).transpose(1, 2).reshape(-1)


def _packed_result(mod: QuantLinear, qcfg: QuantConfig) -> QuantResult | None:
    """A packed layer's solution, if it lies exactly on ``qcfg``'s GGML grid; else None."""
    from ..quant.pack import unpack_qweight, unpack_qzeros

    g_idx = mod.g_idx.to(torch.int32)
    if mod.bits != qcfg.bits or not is_blockwise(g_idx, mod.in_features):
        return None
    q = unpack_qweight(mod.qweight, mod.bits).to(torch.uint8)
    zeros = unpack_qzeros(mod.qzeros, mod.bits).to(torch.int32)
    scales = mod.scales.float()
    if qcfg.grid == "signed":
        if not torch.all(zeros == 1 << (mod.bits - 1)):
            return None
        return QuantResult(q, scales, zeros, g_idx, None, 0.0, 0.0)
    mins = (-scales * zeros.float())  # Ŵ = s·(q − z) = s·q + (−s·z): exact only if −s·z is fp16
    if not torch.equal(mins.half().float(), mins):
        return None
    return QuantResult(q, scales, torch.zeros_like(zeros), g_idx, None, 0.0, 0.0, mins)


def _linear_bytes(name: str, mod: torch.nn.Module, t: GGMLType, qcfg: QuantConfig | None,
                  results: dict[str, QuantResult], report: GGUFReport) -> np.ndarray:
    if name in results:
        report.solved.append(name)
        return t.pack(results.pop(name))
    if isinstance(mod, QuantLinear):
        res = _packed_result(mod, qcfg) if qcfg is not None else None
        if res is not None:
            report.carried.append(name)
            return t.pack(res)
        report.requantized.append(name)
        log.warning("%s: its %d-bit GPTQ grid is not %s's; dequantized and rounded again to %s", name, mod.bits,
                    t.name, t.name)
        return t.encode(mod.dequantized_weight(), qcfg)
    if t.quantized:
        report.solved.append(name)
    return t.encode(mod.weight.data, qcfg)


def float_blocks(lm: LoadedModel) -> range | None:
    """The trailing run of blocks whose linears are all plain (not packed): what GPTQ may solve."""
    blocks = lm.arch.blocks(lm.model)
    plain = [all(isinstance(b.get_submodule(n), torch.nn.Linear) for n in lm.arch.linear_names) for b in blocks]
    first = len(plain)
    while first > 0 and plain[first - 1]:
        first -= 1
    if any(plain[:first]):
        log.warning("plain blocks before packed ones are rounded (RTN), not solved by GPTQ")
    return range(first, len(plain)) if first < len(plain) else None


def check_exportable(lm: LoadedModel, cfg: GGUFConfig) -> None:
    """Refuse, before any solving, what the file cannot hold: the architecture, the tokenizer."""
    gguf_arch(getattr(lm.model.config, "model_type", None))
    read_vocab(lm.tokenizer, lm.model.config.vocab_size)


def write_gguf(lm: LoadedModel, cfg: GGUFConfig, out: Path, results: dict[str, QuantResult], *,
               t0: float | None = None) -> GGUFReport:
    """Write ``lm`` to ``out`` as GGUF of ``cfg.type``, the layers in ``results`` (the driver's
    solutions on the type's grid, consumed) as solved."""
    t0 = time.perf_counter() if t0 is None else t0
    out = output_path(out)
    config = lm.model.config
    arch_name = gguf_arch(getattr(config, "model_type", None))
    t = ggml_type(cfg.type)
    et = ggml_type(cfg.embed_type or ("q8_0" if t.quantized else t.name))
    qcfg = cfg.quant_config()
    report = GGUFReport(out, t.name, et.name, cfg.method if t.quantized else "none")

    model, arch = lm.model, lm.arch
    blocks = arch.blocks(model)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, len(blocks))
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    rope_heads = {"self_attn.q_proj": heads, "self_attn.k_proj": kv}
    tensors: list[tuple[str, np.ndarray, GGMLType]] = []

    def add(hf_name: str, data: np.ndarray, tt: GGMLType, rows: torch.Tensor | None = None) -> None:
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"no GGUF name for tensor {hf_name}: this model has parts llama.cpp's llama lacks")
        tensors.append((name, data[rows.cpu().numpy()] if rows is not None else data, tt))

    f32 = ggml_type("f32", internal=True)
    embed = model.get_submodule(arch.embed).weight.data
    add(f"{arch.embed}.weight", et.encode(embed), et)
    for i, block in enumerate(blocks):
        for local, mod in block.named_modules():
            full = f"{arch.layers}.{i}.{local}"
            if local in arch.linear_names:
                rows = _rope_rows(mod.out_features, rope_heads[local]) if local in rope_heads else None
                add(f"{full}.weight", _linear_bytes(full, mod, t, qcfg, results, report), t, rows)
                if getattr(mod, "bias", None) is not None:
                    add(f"{full}.bias", f32.encode(mod.bias.data[rows] if rows is not None else mod.bias.data), f32)
            elif not any(local.startswith(n + ".") for n in arch.linear_names):
                for pname, p in mod.named_parameters(recurse=False):
                    add(f"{full}.{pname}", f32.encode(p.data), f32)
    add(f"{arch.norm}.weight", f32.encode(model.get_submodule(arch.norm).weight.data), f32)
    head = model.get_submodule(arch.lm_head)
    tied = not isinstance(head, QuantLinear) and head.weight.data_ptr() == embed.data_ptr()
    if not tied:  # llama.cpp uses token_embd as the output when there is no output.weight
        w = head.dequantized_weight() if isinstance(head, QuantLinear) else head.weight.data
        add(f"{arch.lm_head}.weight", et.encode(w), et)

    with atomic_file(out) as tmp:
        w = gguf.GGUFWriter(tmp, arch_name)
        add_hparams(w, config, len(blocks), lm.name)
        add_tokenizer(w, lm.tokenizer, config.vocab_size)
        w.add_file_type(int(t.file_type))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for name, data, tt in tensors:
            raw = tt.ggml if tt.ggml == gguf.GGMLQuantizationType.BF16 or tt.quantized else None
            w.add_tensor(name, data, raw_dtype=raw)
            report.tensors[tt.name] = report.tensors.get(tt.name, 0) + 1
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file(progress=False)
        w.close()
    report.size = out.stat().st_size
    report.seconds = time.perf_counter() - t0
    log.info("wrote %s (%s, %.1f MB) in %.1f s", out, t.name, report.size / 1e6, report.seconds)
    return report
