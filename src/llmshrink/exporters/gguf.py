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
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch

from ..errors import UserError
from ..models.experts import expert_count
from ..models.load import LoadedModel
from ..models.origin import source_general
from ..paths import atomic_file, output_path
from ..quant.config import QuantConfig
from ..quant.gptq import QuantResult
from ..quant.grid import GRID_KINDS
from ..quant.qlinear import QuantLinear
from .config import GGUFConfig
from .ggml import GGMLType, ggml_type, is_blockwise
from .gguf_arch import GGUFArch, check_gguf_arch, gguf_arch_of
from .gguf_meta import add_general, add_hparams, add_tokenizer, read_vocab, rope_of
from .gguf_mix import fallback, plan_types

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
    if GRID_KINDS[qcfg.grid].two_level or mod.bits != qcfg.bits or not is_blockwise(g_idx, mod.in_features):
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
        log.debug("%s: its %d-bit GPTQ grid is not %s's; dequantized and rounded again", name, mod.bits, t.name)
        return t.encode(mod.dequantized_weight(), qcfg)
    if t.quantized:
        report.solved.append(name)
    return t.encode(mod.weight.data, qcfg)


def _norm(target: GGUFArch, name: str, w: torch.Tensor) -> torch.Tensor:
    """A norm's weight as llama.cpp multiplies by it (Gemma's ``1 + w``)."""
    return w.float() + target.norm_shift if target.norm_shift and name.rsplit(".", 1)[-1].endswith("norm") else w


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


@dataclass
class TypePlan:
    """Each tensor's GGML type in the file: the decoder blocks' linears by full HF name, the
    embedding, and an untied output (None when tied)."""

    linears: dict[str, GGMLType]
    embed: GGMLType
    output: GGMLType | None
    file_type: gguf.LlamaFileType


def _tensor_names(lm: LoadedModel):
    """A function HF tensor name -> its GGUF name, for ``lm``'s architecture and block count."""
    arch = gguf_arch_of(getattr(lm.model.config, "model_type", None))
    names = gguf.get_tensor_name_map(arch.model_arch, len(lm.arch.blocks(lm.model)))
    return lambda hf: names.get_name(lm.arch.to_disk(hf), try_suffixes=(".weight", ".bias"))


def _is_tied(lm: LoadedModel) -> bool:
    head = lm.model.get_submodule(lm.arch.lm_head)
    embed = lm.model.get_submodule(lm.arch.embed).weight
    return not isinstance(head, QuantLinear) and head.weight.data_ptr() == embed.data_ptr()


def plan_tensor_types(lm: LoadedModel, cfg: GGUFConfig) -> TypePlan:
    """The type of every tensor of ``lm``'s file under ``cfg``: one type for all linears (with the
    embedding and output in ``embed_type``, default q8_0 for quantized types), or, for a mix,
    llama.cpp's choice per tensor (``embed_type`` still overrides the embedding and output)."""
    model, arch = lm.model, lm.arch
    linears = {f"{arch.layers}.{i}.{n}": b.get_submodule(n) for i, b in enumerate(arch.blocks(model))
               for n in arch.linear_names}
    tied = _is_tied(lm)
    forced = ggml_type(cfg.embed_type, internal=True) if cfg.embed_type else None
    if cfg.mix is None:
        t = ggml_type(cfg.type)
        et = forced or ggml_type("q8_0" if t.quantized else t.name)
        return TypePlan(dict.fromkeys(linears, t), et, None if tied else et, t.file_type)
    gguf_name = _tensor_names(lm)
    width = model.config.hidden_size
    tensor = {n: f"{_stacked(arch, n)}.weight" for n in linears}  # a linear -> the file's tensor holding it
    order = [(f"{arch.embed}.weight", width),
             *dict.fromkeys((tensor[n], m.in_features) for n, m in linears.items())]
    if not tied:
        order.append((f"{arch.lm_head}.weight", width))
    by_gguf = {gguf_name(n): n for n, _ in order}
    n_kv = getattr(model.config, "num_key_value_heads", None) or model.config.num_attention_heads
    plan = plan_types(cfg.mix, [(gguf_name(n), w) for n, w in order],
                      n_gqa=model.config.num_attention_heads // n_kv, tied=tied,
                      n_expert=expert_count(model, arch.layers, arch.experts) if arch.experts else 0)
    types = {by_gguf[g]: ggml_type(t, internal=True) for g, t in plan.items()}
    if forced is not None:  # the forced type still obeys the row-width fallback
        types[f"{arch.embed}.weight"] = ggml_type(fallback(forced.name, width, "token_embd.weight"), internal=True)
        types[f"{arch.lm_head}.weight"] = types[f"{arch.embed}.weight"]
    embed = types[f"{arch.embed}.weight"]
    output = None if tied else types[f"{arch.lm_head}.weight"]
    return TypePlan({n: types[tensor[n]] for n in linears}, embed, output, cfg.mix.file_type)


def _stacked(arch, full: str) -> str:
    """A linear's full name, or for an expert's linear the stacked tensor of its block and kind."""
    block, _, local = full.partition(f"{arch.layers}.")[2].partition(".")
    if arch.expert_of(local) is None:
        return full
    return f"{arch.layers}.{block}.{arch.experts}.{local.rsplit('.', 1)[1]}"


def check_exportable(lm: LoadedModel, cfg: GGUFConfig) -> None:
    """Refuse, before any solving, what the file cannot hold: the architecture (and what llama.cpp
    would compute otherwise), the tokenizer."""
    config = lm.model.config
    check_gguf_arch(gguf_arch_of(getattr(config, "model_type", None)), config, _is_tied(lm))
    rope_of(config)
    read_vocab(lm.tokenizer, config.vocab_size)


class _TensorSink:
    """Each tensor handed to gguf-py's writer as soon as it is encoded, and spooled by it to a
    file beside the output: memory never holds the encoded model, only the tensor at hand."""

    def __init__(self, writer: gguf.GGUFWriter, names, report: GGUFReport):
        self.writer, self.names, self.report = writer, names, report

    def add(self, hf_name: str, data: np.ndarray, tt: GGMLType, rows: torch.Tensor | None = None) -> None:
        name = self.names(hf_name)
        if name is None:
            raise UserError(f"no GGUF name for tensor {hf_name}: this model has parts llama.cpp's llama lacks")
        raw = tt.ggml if tt.ggml == gguf.GGMLQuantizationType.BF16 or tt.quantized else None
        self.writer.add_tensor(name, data[rows.cpu().numpy()] if rows is not None else data, raw_dtype=raw)
        self.report.tensors[tt.name] = self.report.tensors.get(tt.name, 0) + 1


def _add_block(sink: _TensorSink, lm: LoadedModel, cfg: GGUFConfig, plan: TypePlan, i: int, block: torch.nn.Module,
               results: dict[str, QuantResult]) -> None:
    """Block ``i``'s tensors: its linears on their planned types, norms (and biases) as F32."""
    arch, config = lm.arch, lm.model.config
    target = gguf_arch_of(getattr(config, "model_type", None))
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    rope_heads = {"self_attn.q_proj": heads, "self_attn.k_proj": kv} if target.rope_rows else {}
    f32 = ggml_type("f32", internal=True)
    experts: dict[str, list[np.ndarray]] = {}  # gate_proj/up_proj/down_proj -> each expert's, stacked below
    for local, mod in block.named_modules():
        full = f"{arch.layers}.{i}.{local}"
        if local in arch.linear_names:
            t = plan.linears[full]
            qcfg = cfg.quant_config(t.name) if t.quantized else None
            rows = _rope_rows(mod.out_features, rope_heads[local]) if local in rope_heads else None
            data = _linear_bytes(full, mod, t, qcfg, results, sink.report)
            if arch.expert_of(local) is not None:
                experts.setdefault(local.rsplit(".", 1)[1], []).append(data)
                continue
            sink.add(f"{full}.weight", data, t, rows)
            if getattr(mod, "bias", None) is not None:
                sink.add(f"{full}.bias", f32.encode(mod.bias.data[rows] if rows is not None else mod.bias.data), f32)
        elif not any(local.startswith(n + ".") for n in arch.linear_names):
            for pname, p in mod.named_parameters(recurse=False):
                sink.add(f"{full}.{pname}", f32.encode(_norm(target, local, p.data)), f32)
    for kind, arrays in experts.items():  # llama.cpp holds a block's experts as one [experts, out, in] tensor
        sink.add(f"{arch.layers}.{i}.{arch.experts}.{kind}.weight", np.stack(arrays),
                 plan.linears[f"{arch.layers}.{i}.{arch.experts}.0.{kind}"])


def _add_tensors(sink: _TensorSink, lm: LoadedModel, cfg: GGUFConfig, plan: TypePlan,
                 results: dict[str, QuantResult]) -> None:
    """Every tensor in llama.cpp's order; a lazily loaded model's blocks are read one at a time and
    freed again once written (those it held already stay)."""
    model, arch = lm.model, lm.arch
    target = gguf_arch_of(getattr(model.config, "model_type", None))
    f32 = ggml_type("f32", internal=True)
    sink.add(f"{arch.embed}.weight", plan.embed.encode(model.get_submodule(arch.embed).weight.data), plan.embed)
    for i, block in enumerate(arch.blocks(model)):
        read = lm.blocks is not None and not lm.blocks.is_materialized(block)
        if read:
            lm.blocks.materialize(i, block)
        _add_block(sink, lm, cfg, plan, i, block, results)
        if read:
            lm.blocks.release(block)
    norm = model.get_submodule(arch.norm).weight.data
    sink.add(f"{arch.norm}.weight", f32.encode(_norm(target, arch.norm, norm)), f32)
    if plan.output is not None:  # llama.cpp uses token_embd as the output when there is no output.weight
        head = model.get_submodule(arch.lm_head)
        w = head.dequantized_weight() if isinstance(head, QuantLinear) else head.weight.data
        sink.add(f"{arch.lm_head}.weight", plan.output.encode(w), plan.output)


def write_gguf(lm: LoadedModel, cfg: GGUFConfig, out: Path, results: dict[str, QuantResult], *,
               t0: float | None = None) -> GGUFReport:
    """Write ``lm`` to ``out`` as GGUF of ``cfg.type``, the layers in ``results`` (the driver's
    solutions on the type's grid, consumed) as solved. Tensors are spooled to disk beside ``out``
    as they are encoded; with a lazily loaded model (``lm.blocks``) memory holds one block."""
    t0 = time.perf_counter() if t0 is None else t0
    out = output_path(out)
    config = lm.model.config
    target = gguf_arch_of(getattr(config, "model_type", None))
    plan = plan_tensor_types(lm, cfg)
    quantized = cfg.mix is not None or ggml_type(cfg.type).quantized
    report = GGUFReport(out, cfg.type, plan.embed.name, cfg.method if quantized else "none")
    with atomic_file(out) as tmp, tempfile.TemporaryFile(dir=tmp.parent, prefix=f".{out.name}.") as spool:
        w = gguf.GGUFWriter(tmp, target.name, use_temp_file=True)
        w.temp_file = spool  # gguf-py spools to /tmp by default: keep it on the output's disk
        _add_tensors(_TensorSink(w, _tensor_names(lm), report), lm, cfg, plan, results)
        add_general(w, source_general(lm.path), name=Path(lm.name).name or lm.name, n_params=lm.num_parameters, quantized=quantized)
        add_hparams(w, config, len(lm.arch.blocks(lm.model)))
        target.keys(w, config)
        add_tokenizer(w, lm.tokenizer, config.vocab_size)
        w.add_file_type(int(plan.file_type))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file(progress=False)
        w.close()
    report.size = out.stat().st_size
    report.seconds = time.perf_counter() - t0
    if report.requantized:
        log.warning("%d packed layers (%s, ...) are not on their file type's grid: dequantized and rounded again",
                    len(report.requantized), report.requantized[0])
    log.info("wrote %s (%s, %.1f MB) in %.1f s", out, cfg.type, report.size / 1e6, report.seconds)
    return report
