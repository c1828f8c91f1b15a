import fnmatch

import pytest

from llmshrink.errors import UserError
from llmshrink.models.zoo import ALIASES, DEFAULT_MODEL, get_alias


def test_default_alias_is_consistent():
    alias = get_alias(DEFAULT_MODEL)
    assert alias.name == DEFAULT_MODEL and set(ALIASES) >= {DEFAULT_MODEL}
    assert any(fnmatch.fnmatch(alias.gguf_member, m) for m in alias.artifact.members)  # the fetch keeps it
    assert len(alias.gguf_sha256) == 64 and len(alias.artifact.sha256) == 64


def test_unknown_alias_names_the_known_ones():
    with pytest.raises(UserError, match="unknown model 'llama-70b': give a Hugging Face model folder, a .gguf "
                                        "file, or one of: smollm2-135m"):
        get_alias("llama-70b")


def test_verify_refuses_a_different_file(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF but not the published one")
    with pytest.raises(UserError, match="does not match the published file: delete"):
        get_alias(DEFAULT_MODEL).verify(path)
