"""GGML tensor types by name: one class per type (``ggml_base.GGMLType``), the legacy 32-weight
block types in :mod:`.ggml_legacy`, the K-quants in :mod:`.ggml_k`. A new type is one class in
one of them (as gguf-py's ``quants.py`` does it)."""

from __future__ import annotations

from ..errors import UserError
from . import ggml_legacy  # noqa: F401  (each class registers itself; legacy types first)

# isort: split
from . import ggml_k  # noqa: F401
from .ggml_base import BLOCK, GGML_TYPES, QK_K, Blocks, GGMLType, is_blockwise

__all__ = ["BLOCK", "EXPORT_TYPES", "GGML_TYPES", "QK_K", "Blocks", "GGMLType", "ggml_type", "is_blockwise"]

EXPORT_TYPES = tuple(name for name, t in GGML_TYPES.items() if t.exported)


def ggml_type(name: str, *, internal: bool = False) -> GGMLType:
    """The type named ``name`` (``internal``: also types not offered as ``--type``, such as f32)."""
    t = GGML_TYPES.get(str(name).lower())
    if t is None or not (t.exported or internal):
        raise UserError(f"unsupported GGUF type {name!r}: use one of {', '.join(EXPORT_TYPES)}")
    return t
