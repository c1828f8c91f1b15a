"""GGUF -> safetensors conversion (how a .gguf model, the default model included, is loaded)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from llmshrink.cli import main
from llmshrink.errors import UserError
from llmshrink.models.convert import (
    CONVERT_VERSION,
    MARKER,
    convert_gguf,
    inspect_gguf,
    is_converted,
    is_gguf,
)
from llmshrink.models.pretokenizers import name_of

from ..conftest import make_tiny_model, make_tokenizer, save_model_dir


@pytest.fixture(scope="module")
def f16_gguf(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    assert main(["-q", "export", str(tiny_model_dir), "--type", "f16", "--out", str(out)]) == 0
    return out


def test_round_trip_gives_back_the_fp16_weights(f16_gguf, tiny_model_dir, tmp_path):
    info = inspect_gguf(f16_gguf)
    assert info == {"architecture": "llama", "tensors": len(load_file(tiny_model_dir / "model.safetensors")),
                    "general": {"general.type": "model", "general.name": tiny_model_dir.name,
                                "general.size_label": info["general"]["general.size_label"]},
                    "tokenizer_pre": "gpt-2"}
    out = convert_gguf(f16_gguf, tmp_path / "conv", source={"alias": "x"})
    marker = json.loads((out / MARKER).read_text())
    assert marker["converted_from"] == str(f16_gguf) and marker["alias"] == "x"
    assert marker["version"] == CONVERT_VERSION and is_converted(out)
    got, want = load_file(out / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert set(got) == set(want)
    for name, w in want.items():
        assert got[name].dtype == torch.float32
        assert torch.equal(got[name], w.half().float()), name  # F16 file: exactly the fp16-rounded weights
    assert not [p for p in tmp_path.iterdir() if p.name != "conv"]  # written atomically


def test_not_a_gguf_and_truncated_files(f16_gguf, tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"\x00" * 64)
    assert not is_gguf(junk) and not is_gguf(tmp_path / "missing.gguf") and is_gguf(f16_gguf)
    with pytest.raises(UserError, match="not a GGUF file \\(no GGUF magic\\)"):
        inspect_gguf(junk)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(f16_gguf.read_bytes()[: f16_gguf.stat().st_size // 2])
    with pytest.raises(UserError, match="not a readable GGUF file .*truncated"):
        inspect_gguf(cut)


def test_the_tokenizer_splits_as_the_gguf_says(tmp_path):
    """transformers' GGUF reader gives every byte-level BPE GPT-2's split; the conversion restores
    the one the file names (here SmolLM's: digits one by one), so tokens match the source's."""
    tok = make_tokenizer(digits=True)
    src = save_model_dir(tmp_path / "digits", make_tiny_model(len(tok)), tok)
    gguf_file = tmp_path / "digits.gguf"
    assert main(["-q", "export", str(src), "--type", "f16", "--out", str(gguf_file)]) == 0
    assert inspect_gguf(gguf_file)["tokenizer_pre"] == "smollm"
    out = convert_gguf(gguf_file, tmp_path / "conv")
    spec = json.loads((out / "tokenizer.json").read_text())
    assert name_of(spec["pre_tokenizer"]) == "smollm"
    from transformers import AutoTokenizer

    text = "In  1599, the   2nd folio of 36 plays"
    assert AutoTokenizer.from_pretrained(out)(text)["input_ids"] == tok(text)["input_ids"]


def test_an_older_conversion_is_done_again(tmp_path, monkeypatch, f16_gguf):
    from llmshrink.models import load

    monkeypatch.setenv("LLMSHRINK_CACHE", str(tmp_path / "cache"))
    first = load.resolve_model_dir(str(f16_gguf))
    marker = json.loads((first / MARKER).read_text())
    (first / MARKER).write_text(json.dumps({**marker, "version": 1}))
    assert not is_converted(first)
    assert load.resolve_model_dir(str(f16_gguf)) == first and is_converted(first)
