"""Hugging Face GPTQ packing (the AutoGPTQ / GPTQModel ``checkpoint_format: gptq`` layout).

- ``qweight`` int32 [in · bits / 32, out]: codes packed along the input dimension;
- ``qzeros`` int32 [groups, out · bits / 32]: zero points minus one (the v1 convention), packed
  along the output dimension;
- ``scales`` fp16 [groups, out]; ``g_idx`` int32 [in].

For every bit width the packing is one little-endian bit stream: 32 consecutive codes fill
``bits`` int32 words, code k at stream bits [k·bits, (k+1)·bits). For 2, 4 and 8 bits no code
straddles a word; for 3 bits codes 10 and 21 do, which is exactly AutoGPTQ's 3-bit layout.
"""

from __future__ import annotations

import torch

from ..errors import UserError


def _block(bits: int) -> int:
    """Codes per packing block: one word for 2/4/8 bits; 32 codes in 3 words for 3 bits."""
    return 32 // bits if 32 % bits == 0 else 32


def packing_multiple(bits: int) -> int:
    """Both dimensions of a packed layer (qweight: in; qzeros: out) must be multiples of this."""
    return _block(bits)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes [n, m] along dim 0 into int32 [n · bits / 32, m]."""
    n, m = codes.shape
    per = _block(bits)
    if n % per:
        raise UserError(f"cannot pack {n} rows at {bits} bits: the packed dimension must be a multiple of {per}")
    codes = codes.to(torch.int64)
    if codes.min() < 0 or codes.max() >= (1 << bits):
        raise ValueError(f"codes outside [0, {(1 << bits) - 1}]")
    words_per = per * bits // 32
    c = codes.reshape(n // per, per, m)
    words = torch.zeros(n // per, words_per, m, dtype=torch.int64, device=codes.device)
    for k in range(per):
        for b in range(bits):
            pos = k * bits + b
            words[:, pos // 32] |= ((c[:, k] >> b) & 1) << (pos % 32)
    return _to_int32(words.reshape(n // per * words_per, m))


def unpack_codes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: int32 [n · bits / 32, m] -> int32 codes [n, m]."""
    rows, m = packed.shape
    if bits == 3 and rows % 3:
        raise UserError(f"a packed tensor of {rows} rows is not a whole number of {bits}-bit blocks")
    if bits in (2, 4, 8):  # no code straddles a word: one shift-and-mask over all codes
        per = 32 // bits
        shifts = torch.arange(0, 32, bits, dtype=torch.int32, device=packed.device)
        codes32 = (packed[:, None, :] >> shifts[None, :, None]) & ((1 << bits) - 1)
        return codes32.reshape(rows * per, m)
    w = (packed.to(torch.int64) & 0xFFFFFFFF).reshape(rows // 3, 3, m)
    codes = torch.zeros(rows // 3, 32, m, dtype=torch.int64, device=packed.device)
    for k in range(32):
        for b in range(bits):
            pos = k * bits + b
            codes[:, k] |= ((w[:, pos // 32] >> (pos % 32)) & 1) << b
    return codes.reshape(rows // 3 * 32, m).to(torch.int32)


def _to_int32(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 1 << 31, x - (1 << 32), x).to(torch.int32)


def pack_qweight(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes [out, in] -> qweight int32 [in · bits / 32, out]."""
    return pack_codes(q.T.contiguous(), bits)


def unpack_qweight(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    return unpack_codes(qweight, bits).T.contiguous()


def pack_qzeros(zeros: torch.Tensor, bits: int) -> torch.Tensor:
    """Zero points [groups, out] -> qzeros int32 [groups, out · bits / 32], stored minus one (v1).

    A zero point of 0 cannot be stored in v1 (it would read back as 2^bits); grids meant for this
    format keep zero points >= 1.
    """
    if (zeros < 1).any():
        raise ValueError("a zero point of 0 is not representable in the GPTQ v1 format")
    return pack_codes((zeros - 1).T.contiguous(), bits).T.contiguous()


def unpack_qzeros(qzeros: torch.Tensor, bits: int) -> torch.Tensor:
    return unpack_codes(qzeros.T.contiguous(), bits).T.contiguous() + 1
