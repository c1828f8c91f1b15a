"""``gptq_quantize`` against the reference GPTQ loop (tests/quant/reference_gptq.py), bit for bit,
with llmshrink's solve deviations switched off (``mse=False``, lazy block = group size)."""

import pytest
import torch

from llmshrink.quant.config import QuantConfig
from llmshrink.quant.gptq import accumulate_hessian, gptq_quantize

from .reference_gptq import fasterquant

CASES = [  # (bits, group size, sym, act_order, static_groups)
    (4, 128, True, True, False),
    (4, 128, True, False, False),
    (4, 128, False, True, True),
    (3, 128, True, True, True),
    (3, 128, False, False, False),
    (2, 64, True, True, False),
    (8, 64, False, True, False),
]


def hessian(cols: int, seed: int, dead: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    X = torch.randn(512, cols, generator=g) @ mix
    X[:, :5] *= 6  # outlier channels: act-order reorders
    X[:, -dead:] = 0  # dead inputs: H's diagonal is 0 there
    return accumulate_hessian(None, 0, X)[0]


def assert_matches_reference(W: torch.Tensor, H: torch.Tensor, bits, gs, sym, act_order, static) -> None:
    cfg = QuantConfig(bits=bits, group_size=gs, sym=sym, act_order=act_order, static_groups=static,
                      mse=False, block_size=gs)
    ours = gptq_quantize(W, H, cfg).dequantize()
    ref = fasterquant(W, H, bits=bits, groupsize=gs, sym=sym, actorder=act_order, static_groups=static,
                      blocksize=gs)
    assert torch.equal(ours, ref), f"max |diff| {(ours - ref).abs().max().item():.3g}"


@pytest.mark.parametrize(("bits", "gs", "sym", "act_order", "static"), CASES)
@pytest.mark.parametrize("cols", [576, 320])  # the default model's width (ragged at 128) and a ragged 64s
def test_gptq_is_the_reference_loop_bit_for_bit(bits, gs, sym, act_order, static, cols):
    W = torch.randn(96, cols, generator=torch.Generator().manual_seed(cols)) * 0.05
    assert_matches_reference(W, hessian(cols, seed=bits), bits, gs, sym, act_order, static)


def test_the_comparison_can_fail():
    """The MSE search (a deviation) changes the solution: the check above is not vacuous."""
    W = torch.randn(96, 576, generator=torch.Generator().manual_seed(0)) * 0.05
    H = hessian(576, seed=0)
    ours = gptq_quantize(W, H, QuantConfig(bits=3, mse=True, block_size=128)).dequantize()
    ref = fasterquant(W, H, bits=3, groupsize=128, sym=True, actorder=True, static_groups=False)
    assert not torch.equal(ours, ref)
