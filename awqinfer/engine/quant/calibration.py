"""Calibration text for the quantizer, and the token windows cut from it.

The default set needs no download: it is built from what every Python installation
carries, the standard library of the running interpreter (``sysconfig.get_paths()["stdlib"]``,
CPython's ``Lib/``, PSF License). The default models are chat and code models, so it
holds three kinds of text, and the windows are drawn from each in turn:

    prose   the Python language reference as ``help()`` shows it (``pydoc_data/topics.py``),
            the licence text (``LICENSE.txt``), and the docstrings of the top-level modules
    code    the source code of the same modules, in name order
    chat    conversations rendered with the model's own chat template (its special tokens
            included): a user asks about a language topic or a module, the assistant answers
            with the topic's text, the module's docstrings, or a fenced excerpt of its code

Each kind stops at KIND_CHARS (about 50k tokens: enough for 128 windows of 512 tokens
over the three). The text differs slightly between Python versions. A user's own
calibration file (``--calib``) is used as one stream instead.
"""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

import numpy as np

from ...errors import InputError

KIND_CHARS = 200_000  # per kind of text
DOC_CHARS = 2_000  # docstring characters per module
CODE_CHARS = 2_000  # code characters per module
KINDS = ("prose", "code", "chat")


def stdlib_modules() -> list[tuple[str, str, str]]:
    """(name, docstrings, code) of every top-level module of the standard library, in name order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in sorted(stdlib.glob("*.py")):
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (UnicodeDecodeError, SyntaxError, ValueError):
            continue
        docs = [ast.get_docstring(node) for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        prose = "\n\n".join(d for d in docs if d and len(d) > 40)[:DOC_CHARS]
        body = source[source.find("\nimport "):] if "\nimport " in source else source
        found.append((path.stem, prose, body[:CODE_CHARS].strip()))
    return found


def reference_topics() -> list[tuple[str, str]]:
    """(title, text) of the language reference topics ``help()`` shows; [] where pydoc_data is absent."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return []
    return [(name, topics[name].strip()) for name in sorted(topics)]


def prose_text() -> str:
    """The language reference, the licence and the modules' docstrings, interleaved (see the module doc)."""
    license_path = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    parts = [license_path.read_text(encoding="utf-8", errors="replace")] if license_path.is_file() else []
    topics, modules = reference_topics(), [doc for _, doc, _ in stdlib_modules() if doc]
    for i in range(max(len(topics), len(modules))):
        parts += [topics[i][1]] if i < len(topics) else []
        parts += modules[i * 3:(i + 1) * 3]
    return "\n\n".join(parts)[:KIND_CHARS]


def code_text() -> str:
    """Python source of the standard library's modules (see the module doc)."""
    return "\n\n".join(code for _, _, code in stdlib_modules() if code)[:KIND_CHARS]


def conversations() -> list[list[dict]]:
    """Chats about the language and its modules, as lists of {role, content} messages (see the module doc)."""
    chats = []
    topics, modules = reference_topics(), stdlib_modules()
    for i, (name, doc, code) in enumerate(modules):
        chat = []
        if i < len(topics):
            title, text = topics[i]
            chat += [{"role": "user", "content": f"Can you explain {title.replace('-', ' ')} in Python?"},
                     {"role": "assistant", "content": text[:DOC_CHARS]}]
        if doc:
            chat += [{"role": "user", "content": f"What is the {name} module for?"},
                     {"role": "assistant", "content": doc}]
        if code:
            chat += [{"role": "user", "content": f"Show me some of the code of {name}."},
                     {"role": "assistant", "content": f"Here is how `{name}` begins:\n\n```python\n{code}\n```"}]
        if chat:
            chats.append(chat)
    return chats


def chat_text(tokenizer) -> str:
    """The conversations, each rendered with ``tokenizer``'s chat template."""
    parts, size = [], 0
    for chat in conversations():
        parts.append(tokenizer.apply_chat_template(chat, add_generation_prompt=False))
        size += len(parts[-1])
        if size >= KIND_CHARS:
            break
    return "".join(parts)[:KIND_CHARS]


def default_texts(tokenizer) -> dict[str, str]:
    """The built-in calibration text by kind: prose, code, chat."""
    return {"prose": prose_text(), "code": code_text(), "chat": chat_text(tokenizer)}


def read_text(path: str | Path) -> str:
    """A user's calibration text: the UTF-8 file at ``path``."""
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


def calibration_windows(tokenizer, path: str | Path | None, samples: int, seq_len: int) -> np.ndarray:
    """The calibration token windows (samples, seq_len): from the file at ``path``, or the built-in set.

    The built-in set gives the kinds (prose, code, chat) turns: window i comes from kind i % 3.
    """
    if path is not None:
        return windows(tokenizer.encode(read_text(path), add_special_tokens=False), samples, seq_len, str(path))
    texts = default_texts(tokenizer)
    per_kind = {kind: windows(tokenizer.encode(texts[kind], add_special_tokens=False),
                              len(range(i, samples, len(KINDS))), seq_len, f"the built-in {kind} calibration text")
                for i, kind in enumerate(KINDS) if i < samples}
    order = [per_kind[KINDS[i % len(KINDS)]][i // len(KINDS)] for i in range(samples)]
    return np.stack(order)
