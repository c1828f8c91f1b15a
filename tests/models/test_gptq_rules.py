"""Module rules of GPTQ checkpoints (``dynamic``, ``modules_in_block_to_quantize``), read as
GPTQModel, vLLM and optimum read them."""

import re

from llmshrink.models.gptq_rules import bits_per_config, bits_rules, packed_per_config, skip_rules

LINEARS = [f"model.layers.{i}.{n}" for i in range(30) for n in ("self_attn.q_proj", "mlp.down_proj")]


def _gptqmodel_skips(rules: dict, name: str) -> bool:
    """GPTQModel's and vLLM's reading: the first rule whose regex matches the start of the name."""
    for pattern in rules:
        if re.match(pattern.removeprefix("-:").removeprefix("+:"), name):
            return pattern.startswith("-:")
    return False


def test_whole_blocks_get_one_rule_and_partial_blocks_one_per_module():
    packed = [n for n in LINEARS if int(n.split(".")[2]) < 26] + ["model.layers.27.mlp.down_proj"]
    rules = skip_rules(packed, LINEARS, "model.layers")
    assert list(rules) == ["-:model\\.layers\\.(?:26|28|29)\\..*", "-:model\\.layers\\.27\\.self_attn\\.q_proj$"]
    for name in LINEARS:  # block 2 is not block 26; layer 27's down_proj stays packed
        assert _gptqmodel_skips(rules, name) == (name not in packed), name
    assert skip_rules(LINEARS, LINEARS, "model.layers") == {}  # all packed: no rules


def test_packed_per_config_reads_both_fields():
    packed = [n for n in LINEARS if int(n.split(".")[2]) < 26]
    qc = {"dynamic": skip_rules(packed, LINEARS, "model.layers"), "modules_in_block_to_quantize": [packed]}
    assert packed_per_config(qc, "model.layers.2.mlp.down_proj") is True
    assert packed_per_config(qc, "model.layers.26.mlp.down_proj") is False
    only_list = {"modules_in_block_to_quantize": [packed]}  # vLLM's containment test; 2 is not 12, 22
    assert packed_per_config(only_list, "model.layers.12.mlp.down_proj") is True
    assert packed_per_config(only_list, "model.layers.27.mlp.down_proj") is False
    assert packed_per_config({"bits": 4}, "model.layers.0.mlp.down_proj") is None  # an older checkpoint


def _gptqmodel_bits(rules: dict, name: str, default: int) -> int:
    """GPTQModel's reading of a module's width: the first matching rule's ``bits``, else the default."""
    for pattern, over in rules.items():
        if re.match(pattern.removeprefix("-:").removeprefix("+:"), name):
            return over.get("bits", default)
    return default


def test_bits_rules_give_each_width_one_rule_read_back_as_gptqmodel_reads_them():
    widths = {n: (8 if "down" in n and n.endswith("3.mlp.down_proj") else 2 if n.startswith("model.layers.1.") else 3)
              for n in LINEARS}
    rules = bits_rules(widths, 3)
    assert [v for v in rules.values()] == [{"bits": 2}, {"bits": 8}]
    qc = {"bits": 3, "dynamic": {**skip_rules(LINEARS, LINEARS, "model.layers"), **rules}}
    for name, b in widths.items():  # layer 1 is not layer 11 or 13: the rules are anchored
        assert bits_per_config(qc, name, 3) == _gptqmodel_bits(rules, name, 3) == b, name
        assert packed_per_config(qc, name) is True
    assert bits_rules(dict.fromkeys(LINEARS, 4), 4) == {}  # one width: no rules
    partial = {"dynamic": {"-:model\\.layers\\.5\\..*": {}, **rules}}
    assert bits_per_config(partial, "model.layers.5.mlp.down_proj", 3) == 3  # a skipped module: the default
