import json
import shutil

import pytest
import torch

from llmshrink.errors import UserError
from llmshrink.models.arch import arch_for
from llmshrink.models.load import load_model, resolve_model_dir


def test_load_tiny_folder(tiny_model_dir):
    lm = load_model(str(tiny_model_dir))
    assert lm.arch.name == "llama" and not lm.model.training
    assert lm.num_parameters == sum(p.numel() for p in lm.model.parameters())
    assert lm.size_on_disk == (tiny_model_dir / "model.safetensors").stat().st_size
    blocks = lm.arch.blocks(lm.model)
    assert len(blocks) == 2 and set(lm.arch.block_linears(blocks[0])) == set(lm.arch.linear_names)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_path_and_unknown_alias(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        resolve_model_dir(str(tmp_path / "nope" / "model"))
    with pytest.raises(UserError, match="unknown model 'llama-7b'.*smollm2-135m"):
        resolve_model_dir("llama-7b")


def test_folder_without_config(tmp_path):
    with pytest.raises(UserError, match="has no config.json"):
        load_model(str(tmp_path))


def test_unsupported_architecture(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "bert"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="unsupported architecture 'bert'"):
        load_model(str(d))
    with pytest.raises(UserError, match="unsupported architecture"):
        arch_for(None)


def test_truncated_safetensors(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    shard = d / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(UserError, match="not a readable safetensors file.*truncated"):
        load_model(str(d))


def test_pickled_weights_are_refused(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    (d / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, d / "pytorch_model.bin")
    with pytest.raises(UserError, match="only pickled PyTorch weights"):
        load_model(str(d))


def test_corrupt_config_json(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    (d / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="config.json is not valid JSON"):
        load_model(str(d))


def test_non_gguf_file_and_truncated_gguf(tmp_path):
    other = tmp_path / "weights.txt"
    other.write_text("hello")
    with pytest.raises(UserError, match="not a .gguf model"):
        resolve_model_dir(str(other))
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(UserError, match="not a GGUF file"):
        resolve_model_dir(str(fake))


def _write_gguf(path, arch="llama"):
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.ones((64, 16), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_truncated_gguf_is_named(tmp_path):
    path = _write_gguf(tmp_path / "tiny.gguf")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(UserError, match="not a readable GGUF file.*truncated or corrupt"):
        resolve_model_dir(str(path))


def test_gguf_of_unsupported_architecture(tmp_path):
    path = _write_gguf(tmp_path / "bert.gguf", arch="bert")
    with pytest.raises(UserError, match="unsupported architecture 'bert'"):
        resolve_model_dir(str(path))


def test_cuda_asked_without_cuda(tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(UserError, match="no CUDA device"):
        load_model(str(tiny_model_dir), device="cuda")


def test_a_model_too_large_for_the_device_is_refused_before_loading(tiny_model_dir, monkeypatch, capsys):
    from llmshrink.cli import main
    from llmshrink.models import load

    need = (tiny_model_dir / "model.safetensors").stat().st_size  # float32 weights, as loaded
    monkeypatch.setattr(load, "available_memory", lambda device: need // 2)
    with pytest.raises(UserError, match="too large for this device"):
        load_model(str(tiny_model_dir))
    assert main(["eval", str(tiny_model_dir), "--tasks", "lastword"]) == 2
    assert "too large" in capsys.readouterr().err
    monkeypatch.setattr(load, "available_memory", lambda device: need * 2)
    lm = load_model(str(tiny_model_dir))
    assert lm.model.config.num_hidden_layers == 2 and lm.num_parameters == sum(
        p.numel() for p in lm.model.parameters())
