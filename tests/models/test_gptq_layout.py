"""Other readers' module names (``models.gptq_layout``): renames and splits are exact both ways,
and a split packed layer is a packed layer of its own (the rows of the fused one)."""

from __future__ import annotations

import pytest
import torch

import llmshrink as ls
from llmshrink.errors import UserError
from llmshrink.models.gptq_layout import GPTQMODEL, Layout, read_layout
from llmshrink.quant.qlinear import QuantLinear


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_a_split_packed_layer_is_the_fused_layers_rows(bits):
    torch.manual_seed(0)
    fused = torch.nn.Linear(64, 128, bias=True)
    res = ls.gptq_quantize(fused.weight.detach(), torch.eye(64), ls.QuantConfig(bits=bits, group_size=16, sym=False))
    q = QuantLinear.from_result(fused, res, bits)
    state = {f"model.layers.0.mlp.gate_up_proj.{k}": v for k, v in q.state_dict().items()}
    split = GPTQMODEL["phi3"].write(state)
    for i, part in enumerate(("gate_proj", "up_proj")):
        half = QuantLinear(64, 64, bits, q.scales.shape[0], bias=True)
        half.load_state_dict({k.rpartition(".")[2]: v for k, v in split.items() if f".{part}." in k})
        torch.testing.assert_close(half.dequantized_weight(), q.dequantized_weight()[i * 64:(i + 1) * 64],
                                   rtol=0, atol=0)
        torch.testing.assert_close(half.bias, q.bias[i * 64:(i + 1) * 64], rtol=0, atol=0)
    back = GPTQMODEL["phi3"].read(split)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_a_split_that_would_cut_a_packed_word_is_refused():
    # 3-bit zero points of 96 outputs fill 9 words: halves of 48 outputs would cut one
    state = {"model.layers.0.mlp.gate_up_proj.qzeros": torch.zeros(4, 9, dtype=torch.int32)}
    with pytest.raises(UserError, match="equal parts"):
        GPTQMODEL["phi3"].write(state)


def test_renames_read_back_and_leave_other_names_alone():
    mixtral = GPTQMODEL["mixtral"]
    ours = ["model.layers.0.block_sparse_moe.experts.3.w1.qweight", "model.layers.11.block_sparse_moe.experts.10.w2.g_idx",
            "model.layers.1.block_sparse_moe.experts.0.w3.scales", "model.layers.1.block_sparse_moe.gate.weight",
            "model.layers.0.self_attn.q_proj.qweight", "lm_head.weight", "model.embed_tokens.weight"]
    theirs = [mixtral.name(n)[0] for n in ours]
    assert theirs[:4] == ["model.layers.0.mlp.experts.3.gate_proj.qweight", "model.layers.11.mlp.experts.10.down_proj.g_idx",
                          "model.layers.1.mlp.experts.0.up_proj.scales", "model.layers.1.mlp.gate.weight"]
    assert theirs[4:] == ours[4:]
    state = {n: torch.tensor([i]) for i, n in enumerate(theirs)}
    assert read_layout("mixtral", state) is mixtral
    assert read_layout("mixtral", dict.fromkeys(ours)) is None and read_layout("llama", state) is None
    back = mixtral.read(state)
    assert list(back) == ours and [int(v) for v in back.values()] == list(range(len(ours)))


def test_a_split_layer_missing_a_part_is_refused():
    layout = Layout(splits=(("mlp.gate_up_proj", ("mlp.gate_proj", "mlp.up_proj")),))
    with pytest.raises(UserError, match="incomplete"):
        layout.read({"model.layers.0.mlp.gate_proj.qweight": torch.zeros(1)})
