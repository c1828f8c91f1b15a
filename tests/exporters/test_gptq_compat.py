"""Consumers' shape rules for GPTQ checkpoints, said before quantizing; --group-size auto."""

import json

import pytest

from llmshrink.cli import main
from llmshrink.exporters.gptq_compat import auto_group_size, compatibility_notes, resolve_group_size
from llmshrink.quant.config import AUTO_GROUP, QuantConfig

SMOLLM2 = {"model.layers.0.self_attn.q_proj": 576, "model.layers.0.mlp.down_proj": 1536}


def test_auto_picks_the_largest_standard_size_that_divides_every_width():
    assert auto_group_size(SMOLLM2) == 64  # 576 = 9 x 64; 128 does not divide it
    assert auto_group_size({"a": 4096, "b": 11008}) == 128  # Llama-2-7B
    assert auto_group_size({"a": 96, "b": 160}) == 32
    assert auto_group_size({"a": 40}) == -1  # none does: one group per row
    cfg = QuantConfig(group_size="auto")
    assert cfg.group_size == AUTO_GROUP and resolve_group_size(cfg, SMOLLM2).group_size == 64
    with pytest.raises(ValueError, match="settled per model"):
        cfg.group_columns(576)


def test_notes_name_what_is_ruled_out_and_the_fix():
    notes = compatibility_notes(QuantConfig(bits=4, group_size=128, static_groups=True), SMOLLM2)
    assert len(notes) == 1 and "does not divide the input width 576 of model.layers.0.self_attn.q_proj" in notes[0]
    assert "vLLM" in notes[0] and "64, 32 (--group-size auto picks 64)" in notes[0]
    assert compatibility_notes(QuantConfig(bits=4, group_size=64, static_groups=True), SMOLLM2) == []
    three = compatibility_notes(QuantConfig(bits=3, group_size=64, static_groups=True), SMOLLM2)
    assert three == ["vLLM on CPU runs 4- and 8-bit symmetric GPTQ checkpoints only, not 3-bit symmetric"]
    # act-order with groups in solve order (desc_act): vLLM refuses it; static groups, RTN and
    # per-row groups write the trivial g_idx
    dynamic = compatibility_notes(QuantConfig(bits=4, group_size=64), SMOLLM2)
    assert len(dynamic) == 1 and "refused by vLLM" in dynamic[0] and "--static-groups" in dynamic[0]
    for plain in (QuantConfig(method="rtn", group_size=64), QuantConfig(group_size=-1),
                  QuantConfig(group_size=64, act_order=False)):
        assert compatibility_notes(plain, SMOLLM2) == [] and not plain.permuted_groups


def test_quantize_says_so_up_front_and_auto_is_recorded_as_chosen(tmp_path, tiny_model_dir, capsys):
    # the tiny model's widths are 32 and 64: 64 does not divide 32; auto picks 32
    out = tmp_path / "q"
    assert main(["-q", "quantize", str(tiny_model_dir), "--out", str(out), "--method", "rtn",
                 "--group-size", "64"]) == 0
    assert "group size 64 does not divide the input width 32" in capsys.readouterr().err
    auto = tmp_path / "auto"
    assert main(["-q", "quantize", str(tiny_model_dir), "--out", str(auto), "--method", "rtn",
                 "--group-size", "auto"]) == 0
    assert "does not divide" not in capsys.readouterr().err
    qc = json.loads((auto / "config.json").read_text())["quantization_config"]
    record = json.loads((auto / "llmshrink_quantize.json").read_text())
    assert qc["group_size"] == 32 and record["config"]["group_size"] == 32 and "--group-size 32" in record["command"]
