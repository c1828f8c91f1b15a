"""Where llmshrink keeps what it downloads and converts.

``LLMSHRINK_CACHE`` wins; otherwise ``$XDG_CACHE_HOME/llmshrink``; otherwise
``~/.cache/llmshrink``. Nothing is created at import.
"""

from __future__ import annotations

import os
from pathlib import Path


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
