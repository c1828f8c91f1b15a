import pytest
import torch
from safetensors.torch import load_file

from llmshrink.data.calib import CalibConfig
from llmshrink.errors import UserError
from llmshrink.jobs.quantize import run_quantize
from llmshrink.models.lazy import SafetensorsIndex
from llmshrink.models.load import load_model
from llmshrink.quant.config import QuantConfig
from tests.conftest import make_tiny_model, save_model_dir


def test_index_reads_every_tensor_exactly_without_mmap(tiny_model_dir):
    shard = tiny_model_dir / "model.safetensors"
    expected = load_file(shard)
    index = SafetensorsIndex([shard])
    assert index.entries.keys() == expected.keys()
    for name, t in expected.items():
        got = index.read(name)
        assert got.dtype == t.dtype and torch.equal(got, t), name


def test_lazy_model_has_blocks_on_meta_until_materialized(tiny_model_dir):
    eager = load_model(str(tiny_model_dir))
    lazy = load_model(str(tiny_model_dir), lazy_blocks=True)
    blocks = lazy.arch.blocks(lazy.model)
    assert lazy.blocks is not None and all(not lazy.blocks.is_materialized(b) for b in blocks)
    assert not lazy.model.model.embed_tokens.weight.is_meta
    assert lazy.model.lm_head.weight is lazy.model.model.embed_tokens.weight  # still tied
    for i, b in enumerate(blocks):
        lazy.blocks.materialize(i, b)
    ids = torch.randint(0, 200, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(lazy.model(ids).logits, eager.model(ids).logits, rtol=0, atol=0)


def test_dropped_tied_embedding_is_freed_and_restored_tied(tiny_model_dir):
    lazy = load_model(str(tiny_model_dir), lazy_blocks=True)
    emb = lazy.model.model.embed_tokens.weight.detach().clone()
    lazy.blocks.drop(lazy.model, ["model.embed_tokens.weight"])
    assert lazy.model.model.embed_tokens.weight.is_meta and lazy.model.lm_head.weight.is_meta
    lazy.blocks.restore()
    assert torch.equal(lazy.model.model.embed_tokens.weight, emb)
    assert lazy.model.lm_head.weight is lazy.model.model.embed_tokens.weight
    lazy.blocks.restore()  # nothing left to restore: a no-op


def test_truncated_shard_is_named(tmp_path, tokenizer):
    folder = save_model_dir(tmp_path / "m", make_tiny_model(len(tokenizer)), tokenizer)
    index = SafetensorsIndex([folder / "model.safetensors"])
    last = max(index.entries, key=lambda k: index.entries[k].end)
    with open(folder / "model.safetensors", "r+b") as fh:
        fh.truncate(index.entries[last].end - 4)
    with pytest.raises(UserError, match="truncated"):
        index.read(last)


@pytest.mark.parametrize("blocks", [None, "0:1"])
def test_quantizing_a_lazy_model_equals_quantizing_a_loaded_one(tmp_path, tiny_model_dir, text_file, blocks):
    """Block-at-a-time loading and packing change memory, not the checkpoint."""
    cfg = QuantConfig(bits=4, group_size=16)
    calib = CalibConfig(str(text_file), nsamples=4, seqlen=32)
    _, a = run_quantize(load_model(str(tiny_model_dir)), cfg, calib, tmp_path / "eager", blocks=blocks)
    _, b = run_quantize(load_model(str(tiny_model_dir), lazy_blocks=True), cfg, calib, tmp_path / "lazy",
                        blocks=blocks)
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert ta.keys() == tb.keys() and any(k.endswith(".qweight") for k in ta)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def test_lazy_loading_refuses_quantized_checkpoints(tmp_path, tiny_model_dir, text_file):
    _, out = run_quantize(load_model(str(tiny_model_dir)), QuantConfig(group_size=16),
                          CalibConfig(str(text_file), nsamples=2, seqlen=32), tmp_path / "q")
    with pytest.raises(UserError, match="already gptq-quantized"):
        load_model(str(out), lazy_blocks=True)
