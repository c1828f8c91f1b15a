"""The public names of ``import llmshrink`` stay what the README says they are.

A subpackage or module named like a public function would replace it: importing
``llmshrink.export.config`` sets the attribute ``llmshrink.export`` to that package, and
``ls.export(...)`` then fails with "'module' object is not callable" (it did, in CI's slow tier).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

import llmshrink

SRC = Path(llmshrink.__file__).parent


def _clashes(src: Path, names) -> list[str]:
    return [n for n in names if (src / n).is_dir() or (src / f"{n}.py").is_file()]


def test_no_module_is_named_like_a_public_name():
    clashes = _clashes(SRC, llmshrink._API)
    assert not clashes, f"modules named like public API names (rename the module): {clashes}"


def test_public_names_survive_importing_every_module():
    for info in pkgutil.walk_packages([str(SRC)], prefix="llmshrink."):
        if info.name != "llmshrink.__main__":
            importlib.import_module(info.name)
    for name, home in llmshrink._API.items():
        obj = getattr(llmshrink, name)
        assert not isinstance(obj, ModuleType), f"llmshrink.{name} is a module"
        assert obj is getattr(importlib.import_module(home), name)
    assert callable(llmshrink.export) and callable(llmshrink.prune) and callable(llmshrink.generate)


def test_the_clash_check_can_fail(tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "generate.py").write_text("")
    assert _clashes(tmp_path, ["export", "generate", "prune"]) == ["export", "generate"]
