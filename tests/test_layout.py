"""The package's shape, checked so it cannot rot: imports point one way, modules stay small.

Every ``import`` in awqinfer/ is parsed (at module level and inside functions alike) and
resolved to a module of the package. Two rules follow the data flow:

- no import cycle between modules;
- a layer imports only from layers at or below it:

      kernels, errors            (arrays in, arrays out)
      engine.checkpoint          files -> config + arrays
      engine.model               arrays -> logits
      engine.text                text <-> ids, logits -> ids
      engine.quant               building checkpoints
      engine.hub                 names -> directories
      engine.llm, the package    the object users hold
      cli, server                front ends
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "awqinfer"
LAYERS = [  # (module prefix, rank): the longest matching prefix decides
    ("awqinfer.kernels", 0), ("awqinfer.errors", 0),
    ("awqinfer.engine.checkpoint", 1), ("awqinfer.engine.model", 2), ("awqinfer.engine.text", 3),
    ("awqinfer.engine.quant", 4), ("awqinfer.engine.hub", 5), ("awqinfer.engine.llm", 6), ("awqinfer.engine", 6),
    ("awqinfer.cli", 7), ("awqinfer.server", 7), ("awqinfer.__main__", 7), ("awqinfer", 6),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``path`` imports, anywhere in it (functions included)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [f"{stem}.{a.name}" for a in node.names] + [stem]
        else:
            continue
        for t in targets:
            while t and t not in known:  # "pkg.module.func" -> "pkg.module"
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def rank(name: str) -> int:
    return max(((len(p), r) for p, r in LAYERS if name == p or name.startswith(p + ".")), default=(0, 99))[1]


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def test_layers_import_only_downward():
    bad = [f"{a} (layer {rank(a)}) imports {b} (layer {rank(b)})"
           for a, targets in graph().items() for b in targets
           if rank(b) > rank(a)]
    assert not bad, "\n".join(bad)


def test_kernels_know_nothing_of_the_engine():
    bad = [f"{a} imports {b}" for a, targets in graph().items() if a.startswith("awqinfer.kernels")
           for b in targets if not b.startswith(("awqinfer.kernels", "awqinfer.errors"))]
    assert not bad, "\n".join(bad)


def test_the_server_uses_only_the_public_api():
    """awqinfer.server imports awqinfer, awqinfer.errors and awqinfer.frontend, never the engine's modules."""
    bad = [f"{a} imports {b}" for a, targets in graph().items() if a.startswith("awqinfer.server")
           for b in targets if b.startswith("awqinfer.") and not b.startswith(("awqinfer.server", "awqinfer.errors",
                                                                              "awqinfer.frontend"))]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    """The parser itself: a function-level relative import counts like a module-level one."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from ..model.forward import Model\n")
    assert imports_of("awqinfer.engine.text.m", src, {"awqinfer.engine.model.forward"}) == \
        {"awqinfer.engine.model.forward"}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_is_small_and_says_what_it_holds(path):
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 400, f"{path.name} has {len(text.splitlines())} lines (at most 400)"
    assert ast.get_docstring(ast.parse(text)), f"{path.name} has no opening docstring"
