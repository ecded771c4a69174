"""docs/TOUR.md cannot drift from the code: every file it cites exists, every cited line is in its file,
every cited function, class or constant is defined there.

A citation is a repository path in backticks, alone or with a name or a line:

    `awqinfer/engine/model/forward.py`                      the file exists
    `awqinfer/engine/model/forward.py:decoder_layer`        a def, class or assignment of that name
    `awqinfer/engine/model/forward.py:Model.forward`        a method (or attribute) of a class
    `awqinfer/engine/checkpoint/awq_layout.py:12`           a line inside the file (or 12-14, a range)
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOUR = ROOT / "docs" / "TOUR.md"
CITATION = re.compile(r"`((?:awqinfer|tests|benchmarks|docs)/[\w/.-]+\.(?:py|md))(?::([\w.]+|\d+(?:-\d+)?))?`")
# what the tour must walk through, in the order the data flows (each a section heading's words)
TOPICS = ["text", "checkpoint", "AWQ", "embedding", "RMSNorm", "RoPE", "KV cache", "attention", "MLP", "lm_head",
          "sampling", "detokeniz", "compiled decode step", "batched step"]


def citations() -> list[tuple[int, str, str | None]]:
    """(line of TOUR.md, path, name or line or None) for every citation in the tour."""
    found = []
    for number, line in enumerate(TOUR.read_text(encoding="utf-8").splitlines(), start=1):
        found += [(number, m.group(1), m.group(2)) for m in CITATION.finditer(line)]
    return found


@lru_cache(maxsize=None)
def definitions(path: Path) -> frozenset[str]:
    """Names a Python file defines: top-level functions, classes and assignments, and Class.member."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        names |= _bound(node)
        if isinstance(node, ast.ClassDef):
            for member in node.body:
                names |= {f"{node.name}.{name}" for name in _bound(member)}
    return frozenset(names)


def _bound(node: ast.AST) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, ast.Assign):
        return {t.id for t in node.targets if isinstance(t, ast.Name)}
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return {node.target.id}
    return set()


def problem(path: str, target: str | None) -> str | None:
    """What is wrong with one citation, or None."""
    file = ROOT / path
    if not file.is_file():
        return f"{path} does not exist"
    if target is None:
        return None
    if target[0].isdigit():
        first, _, last = target.partition("-")
        n_lines = len(file.read_text(encoding="utf-8").splitlines())
        if not 1 <= int(first) <= int(last or first) <= n_lines:
            return f"{path} has {n_lines} lines, the tour cites line {target}"
        return None
    if file.suffix != ".py":
        return f"{path}: only Python files can be cited by name ({target})"
    if target not in definitions(file):
        return f"{path} defines no {target!r} (renamed or moved?)"
    return None


def test_every_citation_of_the_tour_is_in_the_code():
    cited = citations()
    assert len(cited) >= 60, f"docs/TOUR.md cites the code only {len(cited)} times"
    drifted = [f"docs/TOUR.md:{line}: `{path}{':' + target if target else ''}`: {why}"
               for line, path, target in cited if (why := problem(path, target))]
    assert not drifted, "docs/TOUR.md has drifted from the code; fix these citations:\n" + "\n".join(drifted)


def test_the_tour_walks_the_data_flow_in_order():
    headings = [line for line in TOUR.read_text(encoding="utf-8").splitlines() if line.startswith("## ")]
    positions = []
    for topic in TOPICS:
        where = [i for i, heading in enumerate(headings) if topic.lower() in heading.lower()]
        assert where, f"docs/TOUR.md has no section on {topic!r}; its sections: {headings}"
        positions.append(where[0])
    assert positions == sorted(positions), f"the sections are not in the order data flows: {headings}"


def test_the_checker_catches_drift(tmp_path):
    """The checker itself: a missing file, a line past the end, an unknown name are all reported."""
    assert problem("awqinfer/engine/model/forward.py", "decoder_layer") is None
    assert problem("awqinfer/engine/model/forward.py", "Model.forward") is None
    assert problem("awqinfer/engine/checkpoint/awq_layout.py", "AWQ_PACK_ORDER") is None
    assert "does not exist" in problem("awqinfer/engine/model/no_such.py", None)
    assert "lines" in problem("awqinfer/engine/model/forward.py", "100000")
    assert "lines" in problem("awqinfer/engine/model/forward.py", "5-100000")
    assert "defines no" in problem("awqinfer/engine/model/forward.py", "decoder_layers")
    assert "defines no" in problem("awqinfer/engine/model/forward.py", "Model.backward")
    assert CITATION.findall("see `awqinfer/engine/llm.py:LLM.run` and `docs/PERFORMANCE.md`") == [
        ("awqinfer/engine/llm.py", "LLM.run"), ("docs/PERFORMANCE.md", "")]
