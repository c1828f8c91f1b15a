import numpy as np
import pytest
import torch

from llmshrink.errors import UserError
from llmshrink.quant.pack import (
    pack_codes,
    pack_qweight,
    pack_qzeros,
    unpack_codes,
    unpack_qweight,
    unpack_qzeros,
)


def _autogptq_pack(intweight: np.ndarray, bits: int) -> np.ndarray:
    """AutoGPTQ's QuantLinear.pack loop for [in, out] codes, transcribed as the reference."""
    intweight = intweight.astype(np.uint32)
    qweight = np.zeros((intweight.shape[0] // 32 * bits, intweight.shape[1]), dtype=np.uint32)
    i = row = 0
    while row < qweight.shape[0]:
        if bits in (2, 4, 8):
            for j in range(i, i + 32 // bits):
                qweight[row] |= intweight[j] << (bits * (j - i))
            i += 32 // bits
            row += 1
        else:
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << (3 * (j - i))
            i += 10
            qweight[row] |= intweight[i] << 30
            row += 1
            qweight[row] |= (intweight[i] >> 2) & 1
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << (3 * (j - i) + 1)
            i += 10
            qweight[row] |= intweight[i] << 31
            row += 1
            qweight[row] |= (intweight[i] >> 1) & 0x3
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << (3 * (j - i) + 2)
            i += 10
            row += 1
    return qweight.view(np.int32)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_matches_reference_and_round_trips(bits):
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 1 << bits, (96, 40), generator=g, dtype=torch.int32)  # [in, out]
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.int32 and packed.shape == (96 * bits // 32, 40)
    assert np.array_equal(packed.numpy(), _autogptq_pack(codes.numpy(), bits))
    assert torch.equal(unpack_codes(packed, bits), codes)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_qweight_and_qzeros_round_trip(bits):
    q = torch.randint(0, 1 << bits, (64, 128), dtype=torch.int32)  # [out, in]
    assert torch.equal(unpack_qweight(pack_qweight(q, bits), bits), q)
    zeros = torch.randint(1, 1 << bits, (5, 64), dtype=torch.int32)  # [groups, out]
    qz = pack_qzeros(zeros, bits)
    assert qz.shape == (5, 64 * bits // 32)
    assert torch.equal(unpack_qzeros(qz, bits), zeros)


def test_pack_errors():
    with pytest.raises(UserError, match="multiple of 8"):
        pack_codes(torch.zeros(12, 4, dtype=torch.int32), 4)
    with pytest.raises(UserError, match="multiple of 32"):
        pack_codes(torch.zeros(48, 4, dtype=torch.int32), 3)
    assert pack_codes(torch.zeros(16, 4, dtype=torch.int32), 2).shape == (1, 4)  # 16 codes fill a word
    with pytest.raises(ValueError, match="outside"):
        pack_codes(torch.full((32, 1), 16, dtype=torch.int32), 4)
    with pytest.raises(ValueError, match="not representable"):
        pack_qzeros(torch.zeros(1, 32, dtype=torch.int32), 4)
