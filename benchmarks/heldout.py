"""Held-out evaluation texts for the quantizer: prose, code and chat, none of them in its calibration set.

The built-in calibration text (awqinfer/engine/quant/calibration.py) is made only from the
running interpreter's standard library. These texts come from third-party packages that a
test install always carries (awqinfer's own dependencies and its ``test`` extra), read
from the local installation, so nothing is downloaded:

    prose   the prose paragraphs of the package descriptions (PyPI long descriptions, the METADATA
            file's body) of transformers, huggingface_hub, accelerate, tokenizers, torch, psutil,
            sympy (Apache-2.0 / BSD): markup-only blocks (badges, HTML, code fences, tables) dropped
    code    the Python source of jinja2 (BSD-3-Clause), its modules in name order
    chat    conversations composed from other packages' descriptions (tqdm, networkx, requests,
            numpy, fsspec, filelock, regex, scipy, safetensors, hypothesis; MPL-2.0/MIT, BSD, Apache-2.0):
            the user asks what a package is and about each section of its description, the
            assistant answers with the summary and the section's prose; rendered with the model's
            own chat template, special tokens included

Each text is cut to a length in characters, so the figures do not move with a package's
version more than its wording does (the versions are recorded with the results).
"""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

PROSE_PACKAGES = ("transformers", "huggingface_hub", "accelerate", "tokenizers", "torch", "psutil", "sympy")
CODE_PACKAGE = "jinja2"
CHAT_PACKAGES = ("tqdm", "networkx", "requests", "numpy", "fsspec", "filelock", "regex", "scipy", "safetensors",
                 "hypothesis")
MAX_CHARS = 60_000  # per text: about 12-20k tokens
KINDS = ("prose", "code", "chat")


def description(package: str) -> str:
    """The long description of an installed package (the body of its METADATA file)."""
    meta = md.distribution(package).read_text("METADATA") or ""
    return meta.split("\n\n", 1)[1] if "\n\n" in meta else ""


def prose_blocks(text: str) -> list[str]:
    """The blank-line separated blocks of ``text`` that read as prose: mostly letters, no markup-only lines."""
    blocks = []
    in_fence = False
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)  # HTML comments (licence headers)
    for block in re.split(r"\n\s*\n", text):
        if block.count("```") % 2:
            in_fence = not in_fence
            continue
        stripped = block.strip()
        if in_fence or not stripped or stripped.startswith(("<", "[!", "!", "|", "..", "```", ":", "-->", "==", "--")):
            continue
        letters = sum(c.isalpha() or c == " " for c in stripped)
        if len(stripped) >= 80 and letters >= 0.8 * len(stripped) and "http" not in stripped[:40]:
            blocks.append(stripped)
    return blocks


def prose_text() -> str:
    """Prose paragraphs of package descriptions (see the module doc)."""
    return "\n\n".join(b for p in PROSE_PACKAGES for b in prose_blocks(description(p)))[:MAX_CHARS]


def code_text() -> str:
    """The Python source of jinja2, module by module in name order."""
    root = Path(md.distribution(CODE_PACKAGE).locate_file(CODE_PACKAGE))
    return "\n\n".join(p.read_text(encoding="utf-8") for p in sorted(root.glob("*.py")))[:MAX_CHARS]


def sections(text: str) -> list[tuple[str, list[str]]]:
    """(heading, prose blocks) of a markdown or reStructuredText description; the first heading is ''."""
    found, heading, body = [], "", []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        underline = i + 1 < len(lines) and re.fullmatch(r"([=\-~^])\1{2,}", lines[i + 1].strip() or "x")
        if line.startswith("#") or (underline and line.strip()):
            found.append((heading, prose_blocks("\n".join(body))))
            heading, body = line.lstrip("#").strip(), []
        elif not re.fullmatch(r"([=\-~^])\1{2,}", line.strip() or "x"):
            body.append(line)
    found.append((heading, prose_blocks("\n".join(body))))
    return [(h, b) for h, b in found if b]


def conversation(package: str) -> list[dict]:
    """A chat about ``package``: what it is, then one question per section of its description (a share of the text)."""
    summary = md.distribution(package).metadata.get("Summary") or package
    parts = sections(description(package))
    messages = [{"role": "user", "content": f"What is the Python package {package}?"}]
    intro = [b for h, b in parts[:1] if not h] or [[]]
    messages.append({"role": "assistant", "content": "\n\n".join([summary.strip(), *intro[0]])})
    size = len(messages[-1]["content"])
    for heading, blocks in parts:
        if heading and size < MAX_CHARS // len(CHAT_PACKAGES):  # every package gets a share of the text
            size += len(heading) + sum(map(len, blocks))
            messages.append({"role": "user", "content": f"What does its documentation say about {heading.lower()}?"})
            messages.append({"role": "assistant", "content": "\n\n".join(blocks)})
    return messages


def chat_text(tokenizer) -> str:
    """Conversations about packages, each rendered with ``tokenizer``'s chat template (see the module doc)."""
    chats = [tokenizer.apply_chat_template(conversation(p), add_generation_prompt=False) for p in CHAT_PACKAGES]
    return "".join(chats)[:MAX_CHARS]


def texts(tokenizer) -> dict[str, str]:
    """The three held-out texts by kind."""
    return {"prose": prose_text(), "code": code_text(), "chat": chat_text(tokenizer)}


def versions() -> dict[str, str]:
    """The installed version of every package a text comes from."""
    return {p: md.version(p) for p in (*PROSE_PACKAGES, CODE_PACKAGE, *CHAT_PACKAGES)}


def write(tokenizer, directory: str | Path) -> dict[str, Path]:
    """Write the texts as ``{kind}.txt`` in ``directory``; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, text in texts(tokenizer).items():
        paths[kind] = directory / f"{kind}.txt"
        paths[kind].write_text(text, encoding="utf-8")
    return paths
