import pytest
import torch
from safetensors.torch import save_file

from llmshrink.errors import UserError
from llmshrink.models.files import check_safetensors, find_shards


def test_find_shards_sorted_and_checked(tmp_path):
    for name in ("b.safetensors", "a.safetensors"):
        save_file({"w": torch.ones(4, 4)}, str(tmp_path / name))
    assert [p.name for p in find_shards(tmp_path)] == ["a.safetensors", "b.safetensors"]


def test_pickled_weights_are_refused_and_empty_folders_named(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(UserError, match="only pickled PyTorch weights.*convert them to safetensors"):
        find_shards(tmp_path)
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(UserError, match="holds no \\*.safetensors weights"):
        find_shards(tmp_path)


@pytest.mark.parametrize(("cut", "match"), [(5, "header length is past the end"), (-8, "data section holds")])
def test_truncated_shard_is_named(tmp_path, cut, match):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(16, 16)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(UserError, match=f"{path.name} is not a readable safetensors file .*{match}"):
        check_safetensors([path])
