"""RESULTS.md is written by several benchmarks and by hand: each script owns one marked section.

    <!-- NAME: start -->
    ... what the script wrote last ...
    <!-- NAME: end -->

A script replaces its own section and leaves every other line as it is, so re-running
``python -m benchmarks`` no longer drops the notes written after a run or the other scripts' tables.
"""

from __future__ import annotations

import json
from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    """The start and end comment lines of section ``name``."""
    return f"<!-- {name}: start -->", f"<!-- {name}: end -->"


def write_section(path: Path, name: str, body: str, first: bool = False) -> None:
    """Put ``body`` between section ``name``'s markers in the markdown file at ``path``, keeping the rest.

    A file without the section gets it at its end, or with ``first`` at its start (the main
    benchmark's report opens the document).
    """
    start, end = markers(name)
    section = f"{start}\n{body.strip(chr(10))}\n{end}"
    text = path.read_text() if path.exists() else ""
    if start in text and end in text[text.index(start):]:
        before, rest = text.split(start, 1)
        text = before + section + rest.split(end, 1)[1]
    elif first:
        text = section + "\n\n" + text.lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


def publish(directory: Path, name: str, json_name: str, results: dict, section: str) -> None:
    """Record a benchmark run: its figures in ``directory/json_name``, ``section`` as its part of
    ``directory/RESULTS.md`` (section ``name``), and the section on stdout."""
    directory = Path(directory)
    (directory / json_name).write_text(json.dumps(results, indent=1))
    write_section(directory / "RESULTS.md", name, section)
    print(section)
