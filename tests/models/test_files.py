import pytest
import torch
from safetensors.torch import save_file

from llmshrink.errors import UserError
from llmshrink.models.files import (
    check_safetensors,
    find_shards,
    metadata_of,
    stored_tensors,
    write_safetensors,
)


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


def test_written_safetensors_are_byte_identical_to_save_file_from_memory_or_files(tmp_path):
    from safetensors.torch import load_file

    buf = torch.randn(6, 5, 3)
    views = list(buf.split([2, 4]))  # one buffer, as the driver keeps a batch's activations
    tensors = {"h0": views[0], "h1": views[1], "x": torch.randn(3, 4, dtype=torch.bfloat16).T,  # not contiguous
               "q": torch.randint(-9, 9, (7, 3), dtype=torch.int32), "e": torch.zeros(0), "s": torch.randn(5).half(),
               "b": torch.ones(3, dtype=torch.bool), "i": torch.arange(4), "d": torch.randn(2, dtype=torch.float64),
               "u": torch.arange(3, dtype=torch.uint8), "k": torch.arange(3, dtype=torch.int8),
               "j": torch.arange(3, dtype=torch.int16)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "ref.safetensors"), metadata={"done": "7"})
    write_safetensors(tmp_path / "mem.safetensors", tensors, {"done": "7"})
    assert (tmp_path / "mem.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    # the same tensors copied from the file they sit in, never loaded, in another order
    stored = stored_tensors(tmp_path / "mem.safetensors")
    write_safetensors(tmp_path / "copy.safetensors", dict(reversed(stored.items())), {"done": "7"})
    assert (tmp_path / "copy.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    back = load_file(tmp_path / "copy.safetensors")
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
    assert metadata_of(tmp_path / "copy.safetensors") == {"done": "7"}
