"""Where llmshrink keeps what it downloads and converts.

``LLMSHRINK_CACHE`` wins; otherwise ``$XDG_CACHE_HOME/llmshrink``; otherwise
``~/.cache/llmshrink``. Nothing is created at import.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError


def cache_dir() -> Path:
    env = os.environ.get("LLMSHRINK_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "llmshrink"


def cache_subdir(*parts: str) -> Path:
    path = cache_dir().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def output_path(out: str | Path) -> Path:
    """An output's path, refused before any work when the folder it goes into does not exist."""
    out = Path(out)
    if not out.parent.is_dir():
        raise UserError(f"the folder {out.parent} does not exist: create it or choose another --out")
    return out


@contextlib.contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``out_dir``; on success it replaces ``out_dir`` in one rename,
    on any error it is removed, so a half-written folder never appears under the final name."""
    out_dir = Path(out_dir)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; outputs are ordinary folders
    try:
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(out: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``out``; on success it replaces ``out`` in one rename, on any
    error it is removed, so a half-written file never appears under the final name."""
    out = Path(out)
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}-", suffix=".part")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o644)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
