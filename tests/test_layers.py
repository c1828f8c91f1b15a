"""The package's import graph: no cycle, and no module importing a higher layer.

Every ``import`` counts, module-level or inside a function (a lazy import still ties the two
modules together). The layers, lowest first (README, "Development"):
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "llmshrink"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # the subpackages' __init__ modules hold a docstring only
    ("base", ("errors", "paths", "memory", "fetch", "config", "losses",
              "quant", "models", "data", "pruning", "tune", "exporters", "eval", "jobs")),
    ("core", ("quant.grid", "quant.config", "quant.gptq", "quant.pack", "quant.qlinear")),
    ("models and data", ("models.*", "data.*")),
    ("driver", ("blockwise",)),
    ("algorithms", ("quant.driver", "quant.stages", "quant.recon", "quant.importance", "quant.mix", "pruning.*", "tune.*")),
    ("exporters and evaluators", ("exporters.*", "eval.*", "generation")),
    ("jobs", ("jobs.*",)),
    ("api and cli", ("api", "cli", "cli.*", "__main__", "")),
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _layer(module: str) -> int:
    for i, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, p) or module == p for p in patterns):
            return i
    raise AssertionError(f"module llmshrink.{module} is in no layer: add it to LAYERS (and the README)")


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """The llmshrink modules that ``module`` imports (relative and absolute, at any depth)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                prefix = ".".join(base + ([node.module] if node.module else []))
                targets = [f"llmshrink.{prefix}".rstrip(".")]
            else:
                targets = [node.module or ""]
            names = [f"{targets[0]}.{a.name}" for a in node.names]
            # ``from pkg import mod``: the dependency is the module, not the package
            if any(n.removeprefix("llmshrink.") in known for n in names):
                targets = names
        for t in targets:
            if t == "llmshrink" or t.startswith("llmshrink."):
                name = t.removeprefix("llmshrink").removeprefix(".")
                if name in known:
                    found.add(name)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    known = set(files)
    return {m: _imports(p, m, known) for m, p in files.items()}


def test_every_module_has_a_layer():
    for module in import_graph():
        _layer(module)


def test_no_module_imports_a_higher_layer():
    bad = [f"llmshrink.{m} ({LAYERS[_layer(m)][0]}) imports llmshrink.{d} ({LAYERS[_layer(d)][0]})"
           for m, deps in import_graph().items() for d in sorted(deps)
           if _layer(d) > _layer(m) and d != ""]
    assert not bad, "\n".join(bad)


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if d == "":  # the package's own lazy API facade
                continue
            if state.get(d) == 1:
                return [*stack[stack.index(d):], d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_no_import_cycle():
    cycle = _find_cycle(import_graph())
    assert cycle is None, " -> ".join(f"llmshrink.{m}" for m in cycle)


def test_the_checks_catch_what_they_are_for():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None
    assert _layer("quant.gptq") < _layer("quant.driver") < _layer("exporters.hf") < _layer("jobs.quantize")
    with pytest.raises(AssertionError, match="in no layer"):
        _layer("nowhere")
