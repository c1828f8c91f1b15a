"""GGUF export: metadata and tensors read back by gguf-py, transformers and llama.cpp."""

import gguf
import numpy as np
import pytest
import torch

from llmshrink.cli import main
from llmshrink.data.calib import CalibConfig
from llmshrink.errors import UserError
from llmshrink.exporters.config import GGUFConfig
from llmshrink.exporters.gguf import _rope_rows
from llmshrink.exporters.hf import save_quantized
from llmshrink.jobs.export import export_gguf
from llmshrink.models.arch import arch_of
from llmshrink.models.load import load_model
from llmshrink.quant.config import QuantConfig
from llmshrink.quant.driver import quantize_model
from tests.conftest import make_tiny_model, save_model_dir

CALIB = CalibConfig(nsamples=8, seqlen=32, batch_size=4)


@pytest.fixture
def tiny(tmp_path, tokenizer, text_file):
    model = make_tiny_model(len(tokenizer), layers=3)
    return save_model_dir(tmp_path / "tiny", model, tokenizer)


def _calib(text_file):
    return CalibConfig(data=str(text_file), nsamples=8, seqlen=32, batch_size=4)


def _reader_weights(path):
    r = gguf.GGUFReader(path)
    out = {}
    for t in r.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        out[t.name] = (t.tensor_type.name, np.asarray(w).reshape([int(x) for x in reversed(t.shape)]))
    return r, out


@pytest.mark.parametrize("type_name", ["f16", "bf16", "q8_0", "q4_0", "q4_1"])
def test_every_type_round_trips_through_the_gguf_reader(tmp_path, tiny, text_file, type_name):
    lm = load_model(str(tiny))
    original = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    out = tmp_path / f"m-{type_name}.gguf"
    rep = export_gguf(lm, GGUFConfig(type=type_name), out, calib=_calib(text_file))
    r, w = _reader_weights(out)
    assert r.fields["general.architecture"].contents() == "llama"
    assert r.fields["llama.block_count"].contents() == 3
    assert r.fields["llama.attention.head_count_kv"].contents() == 2
    assert len(r.fields["tokenizer.ggml.tokens"].contents()) == lm.model.config.vocab_size
    assert r.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert "output.weight" not in w  # tied embeddings: llama.cpp reuses token_embd
    kind, q = w["blk.1.attn_q.weight"]
    assert kind == type_name.upper()
    # Quantized layers: the file holds exactly the weights the export solved for (which it leaves
    # in the model), q/k rows in llama.cpp's RoPE order; float types: the weights rounded to the type.
    model = lm.model.model.layers[1].self_attn.q_proj.weight.detach()
    expected = model if type_name.startswith("q") else \
        {"f16": model.half().float(), "bf16": model.bfloat16().float()}[type_name]
    np.testing.assert_array_equal(q, expected[_rope_rows(32, 4)].numpy())
    np.testing.assert_array_equal(w["blk.2.ffn_down.weight"][1], lm.model.model.layers[2].mlp.down_proj.weight
                                  .detach().to(torch.float16 if type_name == "f16" else torch.float32).float().numpy()
                                  if type_name != "bf16" else
                                  lm.model.model.layers[2].mlp.down_proj.weight.detach().bfloat16().float().numpy())
    np.testing.assert_array_equal(w["blk.0.attn_norm.weight"][1], original["model.layers.0.input_layernorm.weight"])
    if type_name.startswith("q"):
        assert len(rep.solved) == 21 and not rep.requantized
        assert not torch.equal(lm.model.model.layers[1].self_attn.q_proj.weight, original[
            "model.layers.1.self_attn.q_proj.weight"])
    assert not list(tmp_path.glob(".*part"))


def test_gptq_q4_0_tensor_is_exactly_the_gptq_solution(tmp_path, tiny, text_file):
    """The q4_0 file holds the GPTQ solution with no second rounding, and GPTQ beats RTN on its grid."""
    from llmshrink.data.corpora import load_corpus
    from llmshrink.data.windows import sample_windows, tokenize_corpus

    lm = load_model(str(tiny))
    qcfg = GGUFConfig(type="q4_0").quant_config()
    calib = _calib(text_file)
    windows = sample_windows(tokenize_corpus(load_corpus(calib.data), lm.tokenizer), 8, 32)
    rep = quantize_model(load_model(str(tiny)).model, arch_of(lm.model), windows, qcfg)
    solution = rep.results["model.layers.0.mlp.gate_proj"]
    assert solution.loss < next(r.rtn_loss for r in rep.layers if r.name == "model.layers.0.mlp.gate_proj")
    export_gguf(lm, GGUFConfig(type="q4_0"), tmp_path / "m.gguf", calib=calib)
    _, w = _reader_weights(tmp_path / "m.gguf")
    np.testing.assert_array_equal(w["blk.0.ffn_gate.weight"][1], solution.dequantize().numpy())


def test_transformers_reads_our_f16_file_back(tmp_path, tiny):
    lm = load_model(str(tiny))
    export_gguf(lm, GGUFConfig(type="f16"), tmp_path / "m.gguf")
    back = load_model(str(tmp_path / "m.gguf"))  # transformers' own GGUF reader
    ids = torch.randint(0, 200, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(back.model(ids).logits, lm.model(ids).logits, atol=2e-2, rtol=0)
    assert back.tokenizer("To be, or not")["input_ids"] == lm.tokenizer("To be, or not")["input_ids"]


def test_untied_pruned_and_partially_quantized_models_export(tmp_path, tokenizer, text_file, caplog):
    model = make_tiny_model(len(tokenizer), layers=3, tie=False)
    calib = torch.randint(0, len(tokenizer), (8, 32), generator=torch.Generator().manual_seed(0))
    # Block 0 on Q4_0's own grid (4-bit, sym, groups of 32 in order): carried over exactly;
    # block 1 at another group size: re-rounded; block 2 plain: solved by GPTQ on the Q4_0 grid.
    rep0 = quantize_model(model, arch_of(model), calib, QuantConfig(bits=4, group_size=32, act_order=False),
                          blocks=range(0, 1))
    rep1 = quantize_model(model, arch_of(model), calib, QuantConfig(bits=4, group_size=16), blocks=range(1, 2))
    rep0.results.update(rep1.results)
    rep0.layers += rep1.layers
    folder = save_quantized(model, tokenizer, rep0, tmp_path / "mixed")
    lm = load_model(str(folder))
    rep = export_gguf(lm, GGUFConfig(type="q4_0"), tmp_path / "m.gguf", calib=_calib(text_file))
    assert len(rep.carried) == 7 and all(".0." in n for n in rep.carried)
    assert len(rep.requantized) == 7 and len(rep.solved) == 7
    said = [r.getMessage() for r in caplog.records if "rounded again" in r.getMessage()]
    assert said == ["7 packed layers (model.layers.1.self_attn.q_proj, ...) are not on their file type's grid: "
                    "dequantized and rounded again"]  # one line for the file, not one per layer
    _, w = _reader_weights(tmp_path / "m.gguf")
    assert w["output.weight"][0] == "Q8_0"
    packed = lm.model.model.layers[0].mlp.up_proj.dequantized_weight()
    np.testing.assert_array_equal(w["blk.0.ffn_up.weight"][1], packed.numpy())


@pytest.mark.parametrize("blocks", [None, "0:2"])
def test_a_gptq_checkpoint_read_block_by_block_exports_the_same_bytes(tmp_path, tiny, text_file, blocks):
    """Loaded lazily (as ``llmshrink export`` loads a GPTQ checkpoint), the packed blocks are read
    one at a time and freed once written; a plain block left to solve makes the export read them
    all first. Either way the file is byte for byte the one an eagerly loaded model gives."""
    from llmshrink.jobs.quantize import run_quantize

    _, q = run_quantize(load_model(str(tiny)), QuantConfig(bits=4, group_size=16), _calib(text_file), tmp_path / "q",
                        blocks=blocks)
    export_gguf(load_model(str(q)), GGUFConfig(type="q4_0"), tmp_path / "eager.gguf", calib=_calib(text_file))
    lazy = load_model(str(q), lazy_blocks=True)
    assert lazy.blocks is not None
    export_gguf(lazy, GGUFConfig(type="q4_0"), tmp_path / "lazy.gguf", calib=_calib(text_file))
    assert (tmp_path / "lazy.gguf").read_bytes() == (tmp_path / "eager.gguf").read_bytes()
    held = [lazy.blocks.is_materialized(b) for b in lazy.arch.blocks(lazy.model)]
    assert held == ([False] * 3 if blocks is None else [True] * 3)  # streamed: every block freed again
    if blocks is None:  # the command loads a packed checkpoint lazily and writes the same file
        assert main(["-q", "export", str(q), "--type", "q4_0", "--out", str(tmp_path / "cli.gguf")]) == 0
        assert (tmp_path / "cli.gguf").read_bytes() == (tmp_path / "eager.gguf").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no spool or part file left


def test_bad_input_one_line_error_and_nothing_left(tmp_path, tiny, capsys):
    assert main(["export", str(tiny), "--type", "q7_k", "--out", str(tmp_path / "a.gguf")]) == 2
    assert "unsupported GGUF type 'q7_k'" in capsys.readouterr().err
    assert main(["export", str(tiny), "--type", "f16", "--out", str(tmp_path / "no" / "a.gguf")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not any(tmp_path.rglob("*.gguf*"))


def test_what_llama_cpp_cannot_run_and_unsupported_tokenizers(tmp_path, tokenizer):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tests.archs import make_arch_model

    gemma = make_arch_model("gemma2", len(tokenizer), tie=False)
    lm = load_model(str(save_model_dir(tmp_path / "gemma", gemma, tokenizer)))
    with pytest.raises(UserError, match="llama.cpp's gemma2 always ties the output to the embedding"):
        export_gguf(lm, GGUFConfig(type="f16"), tmp_path / "g.gguf")

    tok = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")]))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    odd = PreTrainedTokenizerFast(tokenizer_object=tok)
    lm = load_model(str(save_model_dir(tmp_path / "odd", make_tiny_model(8), odd)))
    with pytest.raises(UserError, match="pre-tokenizer cannot be represented in GGUF"):
        export_gguf(lm, GGUFConfig(type="f16"), tmp_path / "o.gguf")
    assert not list(tmp_path.glob("*.gguf"))


def test_cli_export_prints_what_it_wrote(tmp_path, tiny, text_file, capsys):
    out = tmp_path / "m.gguf"
    assert main(["export", str(tiny), "--type", "q4_1", "--out", str(out), "--calib", str(text_file),
                 "--nsamples", "8", "--seqlen", "32"]) == 0
    text = capsys.readouterr().out
    assert "21 q4_1" in text and "layers solved        21 (gptq)" in text
    assert gguf.GGUFReader(out).fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q4_1)


@pytest.mark.parametrize("type_name", ["q4_0", "q4_k_m"])
def test_gptaq_solves_on_the_gguf_grids_too(tmp_path, tiny, text_file, type_name):
    """``--method gptaq`` reaches every GGML grid (a mix's per-tensor grids included): block 0's
    q/k/v read the same inputs in both models and are solved alike; what reads quantized
    outputs differs."""
    calib = _calib(text_file)
    export_gguf(load_model(str(tiny)), GGUFConfig(type=type_name, method="gptaq"), tmp_path / "a.gguf", calib=calib)
    export_gguf(load_model(str(tiny)), GGUFConfig(type=type_name), tmp_path / "b.gguf", calib=calib)
    (_, a), (_, b) = _reader_weights(tmp_path / "a.gguf"), _reader_weights(tmp_path / "b.gguf")
    assert {k: v[0] for k, v in a.items()} == {k: v[0] for k, v in b.items()}
    np.testing.assert_array_equal(a["blk.0.attn_q.weight"][1], b["blk.0.attn_q.weight"][1])
    assert not np.array_equal(a["blk.1.attn_q.weight"][1], b["blk.1.attn_q.weight"][1])
