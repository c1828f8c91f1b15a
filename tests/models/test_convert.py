"""GGUF -> safetensors conversion (how a .gguf model, the default model included, is loaded)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from llmshrink.cli import main
from llmshrink.errors import UserError
from llmshrink.models.convert import MARKER, convert_gguf, inspect_gguf, is_gguf


@pytest.fixture(scope="module")
def f16_gguf(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    assert main(["-q", "export", str(tiny_model_dir), "--type", "f16", "--out", str(out)]) == 0
    return out


def test_round_trip_gives_back_the_fp16_weights(f16_gguf, tiny_model_dir, tmp_path):
    info = inspect_gguf(f16_gguf)
    assert info == {"architecture": "llama", "tensors": len(load_file(tiny_model_dir / "model.safetensors"))}
    out = convert_gguf(f16_gguf, tmp_path / "conv", source={"alias": "x"})
    marker = json.loads((out / MARKER).read_text())
    assert marker["converted_from"] == str(f16_gguf) and marker["alias"] == "x"
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
