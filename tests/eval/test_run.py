"""The perplexity job (eval.run) and the side-by-side comparison (eval.compare)."""

import pytest

from llmshrink.cli import main
from llmshrink.eval.compare import compare_models
from llmshrink.eval.config import EvalConfig
from llmshrink.eval.run import evaluate_perplexity
from llmshrink.models.load import load_model
from llmshrink.quant.qlinear import QuantLinear
from tests.conftest import library_perplexity


@pytest.fixture(scope="module")
def q4(tmp_path_factory, tiny_model_dir):
    from tests.conftest import TEXT

    d = tmp_path_factory.mktemp("q4")
    (d / "c.txt").write_text(TEXT * 8)
    assert main(["-q", "quantize", str(tiny_model_dir), "--out", str(d / "q"), "--bits", "4", "--group-size",
                 "16", "--calib", str(d / "c.txt"), "--nsamples", "4", "--seqlen", "16"]) == 0
    return d / "q"


def test_record_matches_the_library_and_leaves_packed_layers_as_they_were(q4, text_file):
    lm = load_model(str(q4))
    rec = evaluate_perplexity(lm, EvalConfig(data=str(text_file), seqlen=32, max_tokens=200))
    ppl, tokens = library_perplexity(q4, text_file, 32, max_tokens=200)
    assert rec["perplexity"] == pytest.approx(ppl, rel=1e-6) and rec["tokens"] == tokens
    assert (rec["data"], rec["seqlen"], rec["model_path"]) == (str(text_file), 32, str(lm.path))
    assert rec["parameters"] == lm.num_parameters and rec["size_on_disk"] == lm.size_on_disk
    packed = [m for m in lm.model.modules() if isinstance(m, QuantLinear)]
    assert len(packed) == 14 and all(m._w is None and not m._cache for m in packed)  # the scoped mode ended


def test_compare_models_one_row_each(q4, tiny_model_dir, tmp_path):
    from tests.conftest import TEXT

    corpus = tmp_path / "long.txt"
    corpus.write_text(TEXT * 40)  # compare scores windows of 512 tokens
    rows = compare_models([("original", str(tiny_model_dir)), ("q4", str(q4))], data=str(corpus),
                          max_tokens=1100, instruction="To be", new_tokens=4, max_new_tokens=4)
    assert [r["name"] for r in rows] == ["original", "q4"]
    for row, path in zip(rows, (tiny_model_dir, q4), strict=True):
        ppl, tokens = library_perplexity(path, corpus, 512, max_tokens=1100)
        assert row["perplexity"] == pytest.approx(ppl, rel=1e-6) and row["tokens"] == tokens
        assert row["ms_per_token"] > 0 and isinstance(row["answer"], str)
    assert rows[0]["perplexity"] != rows[1]["perplexity"]
    assert rows[1]["size_on_disk"] < rows[0]["size_on_disk"]
