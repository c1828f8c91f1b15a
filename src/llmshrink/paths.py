"""Where llmshrink keeps what it downloads and converts.

``LLMSHRINK_CACHE`` wins; otherwise ``$XDG_CACHE_HOME/llmshrink``; otherwise
``~/.cache/llmshrink``. Nothing is created at import.
"""

from __future__ import annotations

import contextlib
import errno
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
    """An output's path, refused before any work when the folder it goes into does not exist or
    cannot be written."""
    out = Path(out).expanduser()
    parent = out.absolute().parent
    if not parent.is_dir():
        raise UserError(f"the folder {parent} does not exist: create it or choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"the folder {parent} cannot be written: choose another --out")
    return out


def _within(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def check_inputs(out: str | Path, inputs: tuple[str | Path | None, ...]) -> None:
    """Refuse an ``out`` that is one of the ``inputs``, inside one or holding one (whether or not
    its folder exists yet)."""
    out = Path(out).expanduser()
    target = out.resolve()
    for src in inputs:
        # an input that does not exist yet (a recipe's own stage output) counts when it is a path
        if src is None or not (Path(src).exists() or "/" in str(src) or os.sep in str(src)):
            continue
        src = Path(src).expanduser().resolve()
        if _within(target, src) or _within(src, target):
            where = "is" if target == src else "is inside" if src in target.parents else "holds"
            raise UserError(f"--out {out} {where} the input {src}: choose an --out outside the input")


def claim_output(out: str | Path, *, inputs: tuple[str | Path, ...] = (), overwrite: bool = False,
                 folder: bool = True, need_bytes: int = 0, resumes: bool = False) -> Path:
    """Check, before any work, that ``out`` (a folder, or a file when not ``folder``) may be
    written: its parent exists and is writable, it is not one of the ``inputs``, inside one or
    holding one, an existing ``out`` is replaced only with ``overwrite`` (or continued, when the
    job ``resumes`` in it), and the disk has ``need_bytes`` free. Nothing is created."""
    out = output_path(out)
    check_inputs(out, inputs)
    if out.exists() or out.is_symlink():
        kind = "folder" if out.is_dir() else "file"
        if folder != out.is_dir():
            want = "a folder" if folder else "a file name"
            raise UserError(f"--out {out} is a {kind}: give {want} there")
        if not (overwrite or resumes):
            raise UserError(f"--out {out} exists: pass --overwrite to replace it, or choose another --out")
    free = shutil.disk_usage(out.absolute().parent).free
    if need_bytes and free < need_bytes:
        raise UserError(f"{out.absolute().parent} has {free / 1e9:.2f} GB free and the output needs about "
                        f"{need_bytes / 1e9:.2f} GB: free some space or choose another --out")
    return out


def _disk_full(exc: OSError, out: Path) -> UserError | None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"the disk filled up while writing {out}; nothing under that name was changed: "
                         "free some space and run again")
    return None


def _temp_prefix(out: Path, kind: str = "tmp") -> str:
    """Temporaries of ``out`` are named ``.NAME.tmp-PID-...``: a killed run's are recognised (and
    removed) by the next write of the same output."""
    return f".{out.name}.{kind}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove what a killed run left beside ``out`` while writing it (its temporaries, an old
    folder moved aside); the temporaries of a live process are left alone."""
    removed = []
    for kind in ("tmp", "old"):
        for p in Path(out).parent.glob(f".{Path(out).name}.{kind}-*-*"):
            pid = p.name[len(f".{Path(out).name}.{kind}-"):].split("-", 1)[0]
            if not pid.isdigit() or _alive(int(pid)):
                continue
            if kind == "old" and not Path(out).exists() and (p / Path(out).name).is_dir():
                (p / Path(out).name).rename(out)  # killed between the two renames: the old one comes back
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``out_dir``; on success it replaces ``out_dir`` by renames
    (an existing one is moved aside first, then removed), on any error it is removed, so a
    half-written folder never appears under the final name and the old one stays until then. A
    full disk is reported as such."""
    out_dir = Path(out_dir)
    remove_stale_temporaries(out_dir)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=_temp_prefix(out_dir)))
    tmp.chmod(0o755)  # mkdtemp makes it private; outputs are ordinary folders
    try:
        yield tmp
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=_temp_prefix(out_dir, "old")))
            out_dir.rename(old / out_dir.name)
        try:
            tmp.rename(out_dir)
        except BaseException:
            if old is not None:  # put the old folder back
                (old / out_dir.name).rename(out_dir)
                old.rmdir()
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        full = _disk_full(exc, out_dir) if isinstance(exc, OSError) else None
        if full is not None:
            raise full from exc
        raise


@contextlib.contextmanager
def atomic_file(out: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``out``; on success it replaces ``out`` in one rename, on any
    error it is removed, so a half-written file never appears under the final name."""
    out = Path(out)
    remove_stale_temporaries(out)
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=_temp_prefix(out), suffix=".part")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o644)
        os.replace(tmp, out)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        full = _disk_full(exc, out) if isinstance(exc, OSError) else None
        if full is not None:
            raise full from exc
        raise


def read_record(path: Path) -> dict:
    """A JSON record llmshrink wrote (a run's settings, a resume point); a damaged one is named."""
    import json

    try:
        rec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is damaged ({type(exc).__name__}): delete it to start over") from None
    if not isinstance(rec, dict):
        raise UserError(f"{path} is damaged (not a JSON object): delete it to start over")
    return rec


def input_bytes(spec: str | Path) -> int:
    """The bytes of a model given as a file or folder (0 when it is an alias or absent): the
    scale of what an output written from it needs on disk."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.glob("*.safetensors"))
    return 0
