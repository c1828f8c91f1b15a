"""Types made by llama.cpp's quantizer from our F16 file, fed our importance matrix (imatrix GGUF)."""

import gguf
import numpy as np
import pytest

from llmshrink.errors import UserError
from llmshrink.exporters.config import GGUFConfig
from llmshrink.exporters.llamacpp_quant import llama_quantize, read_imatrix, write_imatrix
from llmshrink.jobs.export import export_gguf
from llmshrink.models.load import load_model
from tests.conftest import make_tiny_model, save_model_dir


def test_imatrix_gguf_round_trips_and_has_llama_cpps_layout(tmp_path):
    rng = np.random.default_rng(0)
    im = {"blk.0.attn_q.weight": (rng.random(64).astype(np.float32), 96),
          "blk.0.ffn_down.weight": (rng.random(128).astype(np.float32), 96)}
    path = write_imatrix(tmp_path / "imatrix.gguf", im, dataset="corpus.txt", chunks=6, chunk_size=16)
    r = gguf.GGUFReader(path)
    assert r.fields["general.type"].contents() == "imatrix"
    assert r.fields["imatrix.datasets"].contents() == ["corpus.txt"]
    assert r.fields["imatrix.chunk_count"].contents() == 6 and r.fields["imatrix.chunk_size"].contents() == 16
    t = {t.name: t for t in r.tensors}
    assert list(t["blk.0.attn_q.weight.in_sum2"].shape) == [64, 1] and list(t["blk.0.attn_q.weight.counts"].shape) == [1, 1]
    np.testing.assert_allclose(np.asarray(t["blk.0.attn_q.weight.in_sum2"].data).reshape(-1),
                               im["blk.0.attn_q.weight"][0] * 96, rtol=1e-6)
    back = read_imatrix(path)
    assert back.keys() == im.keys()
    for k, (mean, rows) in im.items():
        np.testing.assert_allclose(back[k][0], mean, rtol=1e-6)
        assert back[k][1] == rows


def test_a_file_that_is_not_an_imatrix_is_refused(tmp_path, tiny_model_dir):
    f = tmp_path / "model.gguf"
    export_gguf(load_model(str(tiny_model_dir)), GGUFConfig(type="f16"), f)
    with pytest.raises(UserError, match="not an imatrix GGUF"):
        read_imatrix(f)


def test_llama_cpp_makes_iq_types_with_our_imatrix(tmp_path, tokenizer):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is in the test extras")
    folder = save_model_dir(tmp_path / "m", make_tiny_model(len(tokenizer), hidden=256, intermediate=512,
                                                            heads=4, kv_heads=1, std=0.08), tokenizer)
    f16 = tmp_path / "f16.gguf"
    export_gguf(load_model(str(folder)), GGUFConfig(type="f16"), f16)
    names = [t.name for t in gguf.GGUFReader(f16).tensors if t.name.startswith("blk.")
             and t.name.endswith(".weight") and len(t.shape) == 2]
    rng = np.random.default_rng(0)
    widths = {t.name: int(t.shape[0]) for t in gguf.GGUFReader(f16).tensors}
    im = {n: rng.random(widths[n]).astype(np.float32) + 0.1 for n in names}
    with pytest.raises(UserError, match="only with an importance matrix"):
        llama_quantize(f16, tmp_path / "x.gguf", "iq2_xxs", None)
    assert not (tmp_path / "x.gguf").exists()
    out = llama_quantize(f16, tmp_path / "iq2.gguf", "iq2_xxs", im)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == "IQ2_XXS"
    assert not list(tmp_path.glob(".*.part"))
    with pytest.raises(UserError, match="no file type 'q4_x'"):
        llama_quantize(f16, tmp_path / "y.gguf", "q4_x", im)
    # llama.cpp's own K mix from the same file: what the bench compares against
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(
        llama_quantize(f16, tmp_path / "k.gguf", "q4_k_m", im, embed_type="q8_0")).tensors}
    assert types["token_embd.weight"] == "Q8_0" and types["blk.0.attn_q.weight"] == "Q4_K"
