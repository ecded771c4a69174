"""Calibration text for AWQ, and the token windows cut from it.

The default set needs no download: it is built from what every Python
installation carries, the standard library of the running interpreter
(``sysconfig.get_paths()["stdlib"]``, CPython's ``Lib/``, PSF license). It
interleaves three kinds of text so that the activations seen are varied:

- the license texts (``LICENSE.txt``: the history of Python and its licenses, English legal prose);
- docstrings (English prose about programming) of every top-level stdlib module, in name order;
- source code (Python) of the same modules.

Each module gives at most DOC_CHARS of docstrings and CODE_CHARS of code; the
text stops at TARGET_CHARS (a few hundred KB, ~100k tokens: enough for AutoAWQ's
default 128 samples x 512 tokens). It differs slightly between Python versions.
"""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

import numpy as np

from ...errors import InputError

TARGET_CHARS = 450_000
DOC_CHARS = 2_000  # per module
CODE_CHARS = 2_000  # per module


def default_text() -> str:
    """The built-in calibration text (see the module doc): license, docstrings and code of the stdlib."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    license_path = stdlib / "LICENSE.txt"
    if license_path.is_file():
        parts.append(license_path.read_text(encoding="utf-8", errors="replace"))
    for path in sorted(stdlib.glob("*.py")):
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (UnicodeDecodeError, SyntaxError, ValueError):
            continue
        docs = [ast.get_docstring(node) for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        prose = "\n\n".join(d for d in docs if d and len(d) > 40)[:DOC_CHARS]
        if prose:
            parts.append(prose)
        body = source[source.find("\nimport "):] if "\nimport " in source else source
        parts.append(body[:CODE_CHARS])
        if sum(map(len, parts)) >= TARGET_CHARS:
            break
    return "\n\n".join(parts)[:TARGET_CHARS]


def read_text(path: str | Path | None) -> str:
    """The calibration text: the UTF-8 file at ``path``, or ``default_text()`` when None."""
    if path is None:
        return default_text()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"calibration file {path} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"calibration file {path} is not UTF-8 text ({e})") from None


def windows(ids: list[int], samples: int, seq_len: int, source: str = "calibration text") -> np.ndarray:
    """``samples`` non-overlapping windows of ``seq_len`` tokens spread evenly over ``ids``: (samples, seq_len)."""
    if len(ids) < samples * seq_len:
        raise InputError(
            f"{source} has {len(ids)} tokens; {samples} samples x {seq_len} tokens need {samples * seq_len}. "
            "Give more text, fewer samples or a shorter seq_len"
        )
    stride = len(ids) // samples
    arr = np.asarray(ids, dtype=np.int64)
    return np.stack([arr[i * stride:i * stride + seq_len] for i in range(samples)])
