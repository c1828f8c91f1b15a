import json

import pytest
import torch
from safetensors import safe_open

from llmshrink.errors import UserError
from llmshrink.eval.perplexity import perplexity
from llmshrink.exporters.hf import check_packable, save_quantized
from llmshrink.models.arch import arch_of
from llmshrink.models.load import load_model
from llmshrink.quant.config import QuantConfig
from llmshrink.quant.driver import quantize_model
from llmshrink.quant.qlinear import QuantLinear
from tests.conftest import make_tiny_model


@pytest.mark.parametrize(("bits", "act_order"), [(4, True), (8, False), (2, True)])
def test_partially_quantized_checkpoint_saves_reloads_and_matches(tmp_path, tokenizer, bits, act_order):
    model = make_tiny_model(len(tokenizer), layers=3)
    calib = torch.randint(0, len(tokenizer), (16, 32), generator=torch.Generator().manual_seed(0))
    cfg = QuantConfig(bits=bits, group_size=16, act_order=act_order)
    report = quantize_model(model, arch_of(model), calib, cfg, blocks=range(0, 2))
    ids = torch.randint(0, len(tokenizer), (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(ids).logits
    out = save_quantized(model, tokenizer, report, tmp_path / "q")

    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (qc["quant_method"], qc["bits"], qc["group_size"], qc["desc_act"]) == ("gptq", bits, 16, act_order)
    assert qc["checkpoint_format"] == "gptq" and len(qc["modules_in_block_to_quantize"][0]) == 14
    assert qc["dynamic"] == {"-:model\\.layers\\.(?:2)\\..*": {}}  # block 2 stays full precision, as GPTQModel reads
    with safe_open(out / "model.safetensors", "pt") as fh:
        keys = set(fh.keys())
        assert fh.get_tensor("model.layers.0.self_attn.q_proj.qweight").dtype == torch.int32
        assert fh.get_tensor("model.layers.0.self_attn.q_proj.scales").dtype == torch.float16
    assert "model.layers.0.mlp.down_proj.g_idx" in keys and "model.layers.0.mlp.down_proj.weight" not in keys
    assert "model.layers.2.mlp.down_proj.weight" in keys  # the unquantized block stays full precision

    lm = load_model(str(out))
    assert lm.num_parameters == sum(p.numel() for p in make_tiny_model(len(tokenizer), layers=3).parameters())
    assert isinstance(lm.model.model.layers[1].mlp.up_proj, QuantLinear)
    assert isinstance(lm.model.model.layers[2].mlp.up_proj, torch.nn.Linear)
    with torch.no_grad():
        got = lm.model(ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    stream = ids.reshape(-1)
    a = perplexity(model, stream, seqlen=20).perplexity
    b = perplexity(lm.model, stream, seqlen=20).perplexity
    assert a == pytest.approx(b, rel=1e-6)


def test_static_groups_make_a_plain_checkpoint_with_the_act_order_solve(tmp_path, tokenizer):
    """Act-order with static groups: the solve goes by decreasing Hessian diagonal, the groups stay
    contiguous, so g_idx is the trivial one and the config says desc_act false (what vLLM needs)."""
    model = make_tiny_model(len(tokenizer), layers=2)
    calib = torch.randint(0, len(tokenizer), (16, 32), generator=torch.Generator().manual_seed(0))
    report = quantize_model(model, arch_of(model), calib, QuantConfig(group_size=16, act_order=True,
                                                                      static_groups=True), blocks=range(0, 2))
    out = save_quantized(model, tokenizer, report, tmp_path / "q")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["desc_act"] is False and qc["static_groups"] is True
    with safe_open(out / "model.safetensors", "pt") as fh:
        names = set(fh.keys())
        g_idx = {k: fh.get_tensor(k) for k in names if k.endswith(".g_idx")}
    assert len(g_idx) == 14
    for name, g in g_idx.items():
        assert torch.equal(g, torch.arange(len(g), dtype=g.dtype) // 16), name


def test_save_into_missing_folder(tmp_path, tokenizer):
    model = make_tiny_model(len(tokenizer))
    report = quantize_model(model, arch_of(model), torch.randint(0, 50, (4, 16)), QuantConfig(group_size=16),
                            blocks=range(0, 1))
    with pytest.raises(UserError, match="does not exist"):
        save_quantized(model, tokenizer, report, tmp_path / "no" / "such" / "dir")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_quantized_lm_head_unties_saves_and_reloads(tmp_path, tokenizer):
    model = make_tiny_model(320, layers=2, tie=True)  # a vocabulary the packing can hold (x8)
    embed_before = model.model.embed_tokens.weight.detach().clone()
    calib = torch.randint(0, len(tokenizer), (8, 32), generator=torch.Generator().manual_seed(0))
    report = quantize_model(model, arch_of(model), calib, QuantConfig(bits=4, group_size=16), lm_head=True)
    assert "lm_head" in report.results and report.layers[-1].name == "lm_head"
    assert report.layers[-1].loss < report.layers[-1].rtn_loss
    assert torch.equal(model.model.embed_tokens.weight, embed_before)  # the embeddings are untouched
    assert not torch.equal(model.lm_head.weight, embed_before)
    ids = torch.randint(0, len(tokenizer), (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(ids).logits
    out = save_quantized(model, tokenizer, report, tmp_path / "q")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["lm_head"] is True and cfg["tie_word_embeddings"] is False
    lm = load_model(str(out))
    assert isinstance(lm.model.lm_head, QuantLinear)
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(lm.model.model.embed_tokens.weight, embed_before)


def test_unpackable_layers_are_refused_before_any_work():
    model = make_tiny_model(300)
    arch = arch_of(model)
    check_packable(model, arch, range(2), False, 4)
    with pytest.raises(UserError, match=r"lm_head is 300x32: 4-bit GPTQ packing .* multiples of 8; leave --lm-head off"):
        check_packable(model, arch, range(2), True, 4)
    with pytest.raises(UserError, match=r"k_proj is 16x32: 3-bit GPTQ packing .* multiples of 32; choose other bits"):
        check_packable(model, arch, range(1, 2), False, 3)


def test_module_rules_that_contradict_the_weights_are_refused(tmp_path, tokenizer):
    model = make_tiny_model(len(tokenizer), layers=3)
    report = quantize_model(model, arch_of(model), torch.randint(0, 50, (4, 16)), QuantConfig(group_size=16),
                            blocks=range(0, 2))
    out = save_quantized(model, tokenizer, report, tmp_path / "q")
    cfg = json.loads((out / "config.json").read_text())
    del cfg["quantization_config"]["dynamic"]
    cfg["quantization_config"]["modules_in_block_to_quantize"][0].append("model.layers.2.mlp.up_proj")
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="model.layers.2.mlp.up_proj holds full-precision weights but .* say packed"):
        load_model(str(out))


def test_release_files_are_16_bit_where_not_packed(tmp_path, tokenizer):
    from llmshrink.exporters.hf import release_dtype

    model = make_tiny_model(len(tokenizer), layers=3)
    report = quantize_model(model, arch_of(model), torch.randint(0, 50, (4, 16)), QuantConfig(group_size=16),
                            blocks=range(0, 2))
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"dtype": "float32"}))
    dtype = release_dtype("auto", src, packed=True)
    assert dtype == torch.float16 and release_dtype("auto", src, packed=False) == torch.bfloat16
    (src / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))
    assert release_dtype("auto", src, packed=True) == torch.bfloat16  # the source's own 16-bit dtype
    assert release_dtype("float32", src, packed=True) == torch.float32  # as asked
    before = model.model.layers[2].mlp.up_proj.weight.detach().clone()
    out = save_quantized(model, tokenizer, report, tmp_path / "q", dtype=dtype)
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    with safe_open(out / "model.safetensors", "pt") as fh:
        assert fh.get_tensor("model.layers.2.mlp.up_proj.weight").dtype == torch.float16
        assert fh.get_tensor("model.embed_tokens.weight").dtype == torch.float16
        assert fh.get_tensor("model.layers.0.mlp.up_proj.qweight").dtype == torch.int32
        assert fh.get_tensor("model.layers.0.mlp.up_proj.scales").dtype == torch.float16
        assert "lm_head.weight" not in set(fh.keys())  # tied: the embedding, written once
    assert torch.equal(model.model.layers[2].mlp.up_proj.weight, before)  # the model in memory is untouched
    lm = load_model(str(out))
    assert torch.equal(lm.model.model.layers[2].mlp.up_proj.weight, before.half().float())


@pytest.mark.parametrize("max_shard", [10**9, 600])
def test_merge_weights_adds_stored_tensors_in_one_file_or_indexed_shards(tmp_path, max_shard):
    from safetensors.torch import load_file, save_file

    from llmshrink.exporters.hf import merge_weights
    from llmshrink.models.files import stored_tensors

    saved = {"model.embed_tokens.weight": torch.randn(8, 16).half(), "model.norm.weight": torch.ones(16).half()}
    spilled = {"model.layers.0.mlp.down_proj.qweight": torch.randint(-99, 99, (4, 16), dtype=torch.int32),
               "model.layers.0.mlp.down_proj.scales": torch.randn(2, 16).half()}
    folder, side = tmp_path / "out", tmp_path / "block-00000.safetensors"
    folder.mkdir()
    save_file(saved, str(folder / "model.safetensors"), metadata={"format": "pt"})
    save_file({k.removeprefix("model.layers.0."): v for k, v in spilled.items()}, str(side))
    stored = {f"model.layers.0.{k}": v for k, v in stored_tensors(side).items()}
    merge_weights(folder, stored, max_shard_size=max_shard)
    files = sorted(p.name for p in folder.iterdir())
    back = {k: v for f in folder.glob("*.safetensors") for k, v in load_file(f).items()}
    assert back.keys() == {**saved, **spilled}.keys()
    assert all(torch.equal(back[k], v) for k, v in {**saved, **spilled}.items())
    if max_shard > 10**6:
        assert files == ["model.safetensors"]
        ref = tmp_path / "ref.safetensors"
        save_file({**saved, **spilled}, str(ref), metadata={"format": "pt"})  # what one save_pretrained writes
        assert (folder / "model.safetensors").read_bytes() == ref.read_bytes()
    else:
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        shards = sorted(set(index["weight_map"].values()))
        assert len(shards) > 1 and files == sorted([*shards, "model.safetensors.index.json"])
        assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
        assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in back.values())
        assert all(k in load_file(folder / f) for k, f in index["weight_map"].items())
