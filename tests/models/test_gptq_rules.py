"""Module rules of GPTQ checkpoints (``dynamic``, ``modules_in_block_to_quantize``), read as
GPTQModel, vLLM and optimum read them."""

import re

from llmshrink.models.gptq_rules import packed_per_config, skip_rules

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
