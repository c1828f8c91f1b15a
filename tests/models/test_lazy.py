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
@pytest.mark.parametrize("tie", [True, False])
def test_quantizing_a_lazy_model_equals_quantizing_a_loaded_one(tmp_path, tokenizer, text_file, blocks, tie,
                                                                monkeypatch):
    """Block-at-a-time loading and packing change memory, not the checkpoint; the embedding (and
    an untied lm_head) are off memory while the blocks are quantized."""
    from llmshrink.models.lazy import LazyBlocks

    model_dir = save_model_dir(tmp_path / "m", make_tiny_model(len(tokenizer), tie=tie), tokenizer)
    cfg = QuantConfig(bits=4, group_size=16)
    calib = CalibConfig(str(text_file), nsamples=4, seqlen=32)
    _, a = run_quantize(load_model(str(model_dir)), cfg, calib, tmp_path / "eager", blocks=blocks)
    lazy = load_model(str(model_dir), lazy_blocks=True)
    seen = []
    real = LazyBlocks.materialize

    def spy(self, i, block):
        seen.append((i, lazy.model.model.embed_tokens.weight.is_meta, lazy.model.lm_head.weight.is_meta))
        return real(self, i, block)

    monkeypatch.setattr(LazyBlocks, "materialize", spy)
    _, b = run_quantize(lazy, cfg, calib, tmp_path / "lazy", blocks=blocks)
    assert seen[0] == (0, True, True)  # block 0 read after the embedding and lm_head left memory
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert ta.keys() == tb.keys() and any(k.endswith(".qweight") for k in ta)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


@pytest.mark.parametrize(("bits", "lm_head"), [(4, False), (8, True)])  # 8 bits: the 300-token head packs
def test_a_gptq_checkpoint_loads_lazily_block_by_block_as_it_loads_whole(tmp_path, tokenizer, text_file, bits,
                                                                         lm_head):
    """A mixed checkpoint (blocks 0:1 packed, the rest float; lm_head packed or tied): lazily, the
    packed layers sit on meta until their block is read, their fp16 scales stay fp16, and once
    every block is read the model is the eagerly loaded one; a released block goes back to meta
    and reads again the same."""
    from llmshrink.quant.qlinear import QuantLinear

    model_dir = save_model_dir(tmp_path / "m", make_tiny_model(len(tokenizer), tie=not lm_head), tokenizer)
    _, out = run_quantize(load_model(str(model_dir)), QuantConfig(bits=bits, group_size=16),
                          CalibConfig(str(text_file), nsamples=2, seqlen=32), tmp_path / "q", blocks="0:1",
                          lm_head=lm_head)
    eager, lazy = load_model(str(out)), load_model(str(out), lazy_blocks=True)
    blocks = lazy.arch.blocks(lazy.model)
    assert lazy.blocks is not None and not any(lazy.blocks.is_materialized(b) for b in blocks)
    packed = blocks[0].self_attn.q_proj
    assert isinstance(packed, QuantLinear) and packed.qweight.is_meta
    if lm_head:  # outside the blocks: read at once, its scales as stored
        assert isinstance(lazy.model.lm_head, QuantLinear) and lazy.model.lm_head.scales.dtype == torch.float16
    else:
        assert lazy.model.lm_head.weight is lazy.model.model.embed_tokens.weight
    for i, b in enumerate(blocks):
        lazy.blocks.materialize(i, b)
    want = eager.model.state_dict()
    got = lazy.model.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    assert packed.scales.dtype == torch.float16
    ids = torch.randint(0, 200, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(lazy.model(ids).logits, eager.model(ids).logits, rtol=0, atol=0)
    lazy.blocks.release(blocks[0])
    assert packed.qweight.is_meta and not lazy.blocks.is_materialized(blocks[0])
    lazy.blocks.materialize(0, blocks[0])
    assert torch.equal(packed.qweight, eager.model.model.layers[0].self_attn.q_proj.qweight)


def test_quantizing_a_quantized_checkpoint_is_refused(tmp_path, tiny_model_dir, text_file):
    _, out = run_quantize(load_model(str(tiny_model_dir)), QuantConfig(group_size=16),
                          CalibConfig(str(text_file), nsamples=2, seqlen=32), tmp_path / "q")
    with pytest.raises(UserError, match="already gptq-quantized"):
        run_quantize(load_model(str(out), lazy_blocks=True), QuantConfig(group_size=16),
                     CalibConfig(str(text_file), nsamples=2, seqlen=32), tmp_path / "qq")
    assert not (tmp_path / "qq").exists()


def test_a_model_whose_one_block_does_not_fit_is_refused_before_reading(tiny_model_dir, monkeypatch, capsys):
    """Block by block needs the largest block plus what stays loaded: less memory than that is a
    one-line error (exit 2) naming the fix; the whole model not fitting is fine."""
    from llmshrink.cli import main
    from llmshrink.models import lazy

    index = SafetensorsIndex([tiny_model_dir / "model.safetensors"])
    sizes = {n: e.end - e.start for n, e in index.entries.items()}  # float32 on disk and as loaded
    rest = sum(v for n, v in sizes.items() if not n.startswith("model.layers."))
    block = sum(v for n, v in sizes.items() if n.startswith("model.layers.0."))
    monkeypatch.setattr(lazy, "available_memory", lambda device: rest + block - 1)
    with pytest.raises(UserError, match="does not fit even block by block"):
        load_model(str(tiny_model_dir), lazy_blocks=True)
    assert main(["quantize", str(tiny_model_dir), "--out", str(tiny_model_dir.parent / "nofit"), "--method",
                 "rtn"]) == 2
    assert "--dtype bfloat16" in capsys.readouterr().err and not (tiny_model_dir.parent / "nofit").exists()
    monkeypatch.setattr(lazy, "available_memory", lambda device: rest + block)  # less than the whole model
    assert rest + block < sum(sizes.values())
    load_model(str(tiny_model_dir), lazy_blocks=True)


@pytest.mark.parametrize("method", ["gptq", "gptaq"])
def test_activations_on_disk_give_the_same_checkpoint(tiny_model_dir, text_file, tmp_path, monkeypatch, capsys, method):
    """--activations disk keeps the calibration activations in a memory-mapped file beside the
    output (GPTAQ: the original model's in a second one): the same bytes out as in memory, the
    files gone at the end; activations too large for memory without it are refused before any pass."""
    from llmshrink import memory
    from llmshrink.cli import main
    from llmshrink.jobs import quantize

    base = ["-q", "quantize", str(tiny_model_dir), "--bits", "4", "--group-size", "16", "--calib", str(text_file),
            "--nsamples", "4", "--seqlen", "32", "--method", method]
    assert main([*base, "--out", str(tmp_path / "mem")]) == 0
    seen = []
    real = quantize._quantize_blocks

    def spy(*a, **kw):
        store = a[7]
        seen.append(store)
        return real(*a, **kw)

    monkeypatch.setattr(quantize, "_quantize_blocks", spy)
    assert main([*base, "--out", str(tmp_path / "disk"), "--activations", "disk"]) == 0
    assert seen[0] is not None and seen[0].name == "activations.bin" and not seen[0].exists()
    assert not seen[0].with_name("activations-original.bin").exists()
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("mem", "disk"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    monkeypatch.setattr(memory, "available_memory", lambda device: 4 * 32 * 32 * 4)  # the activations' size
    assert main([*base, "--out", str(tmp_path / "big")]) == 2
    assert "--activations disk" in capsys.readouterr().err and not (tmp_path / "big").exists()
    assert main([*base, "--out", str(tmp_path / "big"), "--activations", "disk"]) == 0
