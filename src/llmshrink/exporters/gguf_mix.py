"""llama.cpp's K-quant mixes: which GGML type each tensor of a file gets.

``llama-quantize MODEL Q4_K_M`` does not write every tensor as Q4_K: ``llama_tensor_get_type``
(``src/llama-quant.cpp``) gives more bits to some ``attn_v`` and ``ffn_down`` tensors, to the
output (and a tied embedding), and falls back to a 32-weight type where a row is not a multiple
of 256. The rules here are that function's, for the mixes and the architectures we export
(no Falcon or 70B special cases; a mixture of experts' stacked expert tensors each get one type,
and a model of exactly 8 experts, as Mixtral, gets llama.cpp's 8-expert rules), so a file we write
has, tensor for tensor, the types llama.cpp's own quantizer would give it
(``tests/exporters/test_gguf_mix.py`` compares the two on the same F16 file).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from gguf import LlamaFileType

from ..errors import UserError
from .ggml import GGML_TYPES

log = logging.getLogger(__name__)

# a K type on a row that is not a multiple of 256 (llama.cpp's ``tensor_type_fallback``)
FALLBACK = {"q2_k": "q4_0", "q3_k": "q4_0", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0", "iq4_xs": "iq4_nl"}


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's choice of layers that get more bits: the first and last eighth, every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _keep(*_args) -> str | None:
    return None


@dataclass(frozen=True)
class Mix:
    """One ``--type`` that is a mix: the type most tensors get and the rules that change it."""

    name: str
    base: str
    file_type: LlamaFileType
    attn_v: Callable[[int, int, int], str | None] = _keep  # (i, n, n_gqa) -> type, or None: keep base
    ffn_down: Callable[[int, int], str | None] = _keep  # (i, n) -> type, or None
    attn_output: str | None = None
    # with exactly 8 experts llama.cpp keeps attn_v and attn_k at q8_0, and gives attn_output q5_k
    # in these mixes (in the others it keeps the base type, where dense models follow ``attn_output``)
    attn_output_8_experts: bool = False


F = LlamaFileType
MIXES: dict[str, Mix] = {m.name: m for m in (
    Mix("q2_k", "q2_k", F.MOSTLY_Q2_K, attn_v=lambda i, n, g: "q4_k" if g >= 4 else "q3_k",
        ffn_down=lambda i, n: "q3_k", attn_output="q3_k", attn_output_8_experts=True),
    Mix("q3_k_s", "q3_k", F.MOSTLY_Q3_K_S, attn_output_8_experts=True),
    Mix("q3_k_m", "q3_k", F.MOSTLY_Q3_K_M, attn_v=lambda i, n, g: "q5_k" if i < 2 else "q4_k",
        ffn_down=lambda i, n: "q5_k" if i < n // 16 else "q4_k", attn_output="q4_k", attn_output_8_experts=True),
    Mix("q3_k_l", "q3_k", F.MOSTLY_Q3_K_L, attn_v=lambda i, n, g: "q5_k", ffn_down=lambda i, n: "q5_k",
        attn_output="q5_k"),
    Mix("q4_k_s", "q4_k", F.MOSTLY_Q4_K_S, attn_v=lambda i, n, g: "q5_k" if i < 4 else None,
        ffn_down=lambda i, n: "q5_k" if i < n // 8 else None, attn_output_8_experts=True),
    Mix("q4_k_m", "q4_k", F.MOSTLY_Q4_K_M, attn_v=lambda i, n, g: "q6_k" if use_more_bits(i, n) else None,
        ffn_down=lambda i, n: "q6_k" if use_more_bits(i, n) else None, attn_output_8_experts=True),
    Mix("q5_k_s", "q5_k", F.MOSTLY_Q5_K_S),
    Mix("q5_k_m", "q5_k", F.MOSTLY_Q5_K_M, attn_v=lambda i, n, g: "q6_k" if use_more_bits(i, n) else None,
        ffn_down=lambda i, n: "q6_k" if use_more_bits(i, n) else None),
    Mix("q6_k", "q6_k", F.MOSTLY_Q6_K),
    # without an importance matrix (llama.cpp with one keeps ffn_down at iq4_nl)
    Mix("iq4_nl", "iq4_nl", F.MOSTLY_IQ4_NL, attn_v=lambda i, n, g: "q5_k" if g >= 4 else None,
        ffn_down=lambda i, n: "q5_k" if i < n // 8 else None, attn_output_8_experts=True),
    Mix("iq4_xs", "iq4_xs", F.MOSTLY_IQ4_XS, attn_v=lambda i, n, g: "q5_k" if g >= 4 else None,
        ffn_down=lambda i, n: "q5_k" if i < n // 8 else None, attn_output_8_experts=True),
)}


def category(name: str) -> str:
    """A GGUF tensor name's role, as llama.cpp's ``tensor_get_category`` matches it."""
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for key in ("attn_qkv", "attn_v", "attn_k", "attn_q", "attn_output"):
        if f"{key}.weight" in name:
            return key
    for key in ("ffn_up", "ffn_gate", "ffn_down"):
        if key in name:
            return key
    return "other"


def fallback(type_name: str, width: int, tensor: str) -> str:
    """The type a row of ``width`` weights can hold: ``type_name``, or llama.cpp's fallback."""
    t = GGML_TYPES[type_name]
    if not t.quantized or width % t.block == 0:
        return type_name
    if type_name not in FALLBACK:
        raise UserError(f"{tensor}: a row of {width} weights cannot be stored as {type_name} (blocks of {t.block}): "
                        "choose f16 or bf16")
    new = FALLBACK[type_name]
    return new if width % GGML_TYPES[new].block == 0 else "f16"


def _rule(mix: Mix, cat: str, i: int, n: int, n_gqa: int, eight: bool) -> str | None:
    """The type ``mix`` gives the ``i``-th of ``n`` tensors of kind ``cat`` (None: the base type);
    ``eight``: the model has exactly 8 experts."""
    if cat in ("attn_v", "attn_qkv"):  # a fused qkv counts as attn_v, as in llama.cpp
        return "q8_0" if eight else mix.attn_v(i, n, n_gqa)
    if cat == "attn_k":
        return "q8_0" if eight else None
    if cat == "ffn_down":
        return mix.ffn_down(i, n)
    if cat == "attn_output":
        return ("q5_k" if mix.attn_output_8_experts else None) if eight else mix.attn_output
    return None


def plan_types(mix: Mix, tensors: list[tuple[str, int]], *, n_gqa: int, tied: bool,
               n_expert: int = 0) -> dict[str, str]:
    """Each quantizable tensor's type under ``mix``: ``tensors`` are (GGUF name, row width) in file
    order (embedding, blocks, output; a block's experts as one stacked tensor per kind); ``tied``:
    the embedding is also the output; ``n_expert``: experts per block (0: a dense model)."""
    n_v = sum(category(n) in ("attn_v", "attn_qkv") for n, _ in tensors)
    n_layer = len({n.split(".")[1] for n, _ in tensors if n.startswith("blk.")})
    i_v = 0
    plan: dict[str, str] = {}
    fell_back: dict[tuple[str, str, str], int] = {}  # (kind, type, fallback) -> tensors
    for name, width in tensors:
        cat, new = category(name), None
        if cat == "output" or (tied and cat == "token_embd"):
            base = GGML_TYPES[mix.base]
            new = "q8_0" if width % base.block else ("q6_k" if mix.base != "q8_0" else None)
        elif cat in ("attn_v", "attn_qkv"):  # the i-th of the file's attn_v tensors
            new, i_v = _rule(mix, cat, i_v, n_v, n_gqa, n_expert == 8), i_v + 1
        elif cat != "token_embd":  # ffn_down: its block of all blocks (a shared expert's down as well)
            new = _rule(mix, cat, int(name.split(".")[1]) if name.startswith("blk.") else 0, n_layer, n_gqa,
                        n_expert == 8)
        want = new or mix.base
        plan[name] = fallback(want, width, name)
        if plan[name] != want:
            key = (cat, want, plan[name])
            fell_back[key] = fell_back.get(key, 0) + 1
    for (cat, want, got), n in fell_back.items():  # once per tensor kind, as a summary of llama.cpp's lines
        log.info("%s: %d tensor(s) of rows that are not whole %s blocks fall back to %s", cat, n, want, got)
    return plan
