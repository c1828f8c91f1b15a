"""GGUF types llmshrink does not solve itself, made by llama.cpp's own quantizer.

The IQ1/IQ2/IQ3 lattice types are written by ``llama_model_quantize`` (through
llama-cpp-python) from llmshrink's F16 file, fed the importance matrix llmshrink computes from
its calibration pass (:func:`llmshrink.quant.importance.input_importance`). The importance
matrix is also written as llama.cpp's imatrix GGUF (``<tensor>.in_sum2`` / ``<tensor>.counts``,
what ``llama-imatrix`` writes), which ``llama-quantize --imatrix`` reads.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from ..errors import UserError
from ..paths import atomic_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LlamaCppType:
    """A file type made by llama.cpp's quantizer: its ``llama_ftype`` name and whether llama.cpp
    refuses to make it without an importance matrix."""

    ftype: str
    needs_imatrix: bool = False


LLAMACPP_TYPES: dict[str, LlamaCppType] = {
    "iq3_m": LlamaCppType("MOSTLY_IQ3_M"),
    "iq3_s": LlamaCppType("MOSTLY_IQ3_S"),
    "iq3_xs": LlamaCppType("MOSTLY_IQ3_XS"),
    "iq3_xxs": LlamaCppType("MOSTLY_IQ3_XXS"),
    "iq2_m": LlamaCppType("MOSTLY_IQ2_M", True),
    "iq2_s": LlamaCppType("MOSTLY_IQ2_S", True),
    "iq2_xs": LlamaCppType("MOSTLY_IQ2_XS", True),
    "iq2_xxs": LlamaCppType("MOSTLY_IQ2_XXS", True),
    "iq1_m": LlamaCppType("MOSTLY_IQ1_M", True),
    "iq1_s": LlamaCppType("MOSTLY_IQ1_S", True),
}

Imatrix = dict[str, tuple[np.ndarray, int]]  # GGUF tensor name -> (mean x² per column, rows seen)


def write_imatrix(path: Path, imatrix: Imatrix, *, dataset: str, chunks: int, chunk_size: int) -> Path:
    """Write ``imatrix`` as llama.cpp's imatrix GGUF (sums of squares and counts per tensor)."""
    with atomic_file(Path(path)) as tmp:
        w = gguf.GGUFWriter(tmp, arch="")
        w.add_type("imatrix")
        w.add_array("imatrix.datasets", [dataset])
        w.add_uint32("imatrix.chunk_count", chunks)
        w.add_uint32("imatrix.chunk_size", chunk_size)
        for name, (mean, rows) in sorted(imatrix.items()):
            mean = np.asarray(mean, dtype=np.float64)
            w.add_tensor(f"{name}.in_sum2", (mean * rows).astype(np.float32)[None, :])
            w.add_tensor(f"{name}.counts", np.array([[rows]], dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file(progress=False)
        w.close()
    return Path(path)


def read_imatrix(path: Path) -> Imatrix:
    """The importance matrix in an imatrix GGUF: {tensor name: (mean x² per column, rows)}."""
    try:
        reader = gguf.GGUFReader(path)
        sums = {t.name.removesuffix(".in_sum2"): np.asarray(t.data, dtype=np.float64).reshape(-1)
                for t in reader.tensors if t.name.endswith(".in_sum2")}
        counts = {t.name.removesuffix(".counts"): float(np.asarray(t.data).reshape(-1)[0])
                  for t in reader.tensors if t.name.endswith(".counts")}
    except Exception as exc:  # gguf-py raises many kinds of errors on a damaged file
        raise UserError(f"{path} is not a readable imatrix GGUF ({type(exc).__name__}): delete it to have it "
                        "computed again") from None
    if not sums or sums.keys() != counts.keys() or any(sums[n].size == 0 or counts[n] <= 0 for n in sums):
        raise UserError(f"{path} is not an imatrix GGUF (needs <tensor>.in_sum2 and <tensor>.counts pairs): "
                        "delete it to have it computed again")
    return {n: ((sums[n] / counts[n]).astype(np.float32), int(counts[n])) for n in sums}


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise UserError("llama.cpp's own types (" + ", ".join(LLAMACPP_TYPES) + ") are made by llama-cpp-python: "
                        "pip install llama-cpp-python") from None
    return llama_cpp


def llama_quantize(src: Path, dst: Path, ftype: str, imatrix: dict[str, np.ndarray] | None, *,
                   embed_type: str | None = None, nthread: int = 0) -> Path:
    """Make ``dst`` of llama.cpp file type ``ftype`` (``iq2_xxs``, ``q4_k_m``, ...) from the
    F16/F32 GGUF ``src`` with ``llama_model_quantize`` (llama.cpp's tensor types for that file
    type; ``embed_type`` forces the embedding's and output's), weighted by ``imatrix`` ({tensor
    name: mean x² per column}) when given; written atomically."""
    lt = LLAMACPP_TYPES.get(ftype)
    if lt is not None and lt.needs_imatrix and not imatrix:
        raise UserError(f"llama.cpp makes {ftype} only with an importance matrix: give calibration data")
    llama_cpp = _llama_cpp()
    p = llama_cpp.llama_model_quantize_default_params()
    code = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype.upper()}", None)
    if code is None:
        raise UserError(f"llama.cpp has no file type {ftype!r}: use one of {', '.join(LLAMACPP_TYPES)} or a K mix")
    p.ftype = code
    p.nthread = nthread
    if embed_type is not None:
        p.token_embedding_type = p.output_tensor_type = getattr(llama_cpp, f"GGML_TYPE_{embed_type.upper()}")
    keep = []
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for e, (name, mean) in zip(entries, sorted(imatrix.items()), strict=False):
            arr = np.ascontiguousarray(mean, dtype=np.float32)
            keep.append(arr)
            e.name = name.encode()
            e.data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            e.size = arr.size
        entries[len(imatrix)].name = None  # the list ends at a null name
        p.imatrix = entries
    with atomic_file(Path(dst)) as tmp:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(p))
        if rc != 0:
            raise UserError(f"llama.cpp could not make {ftype} from {src} (llama_model_quantize returned {rc})")
    log.info("llama.cpp made %s (%s) from %s", dst, ftype, src)
    return Path(dst)
