"""A .gguf file as --model: imported once with the default model's pipeline, cached by the file's content."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from checkpoints import make_model, random_weights, tiny_config, write_checkpoint
from test_cli import cli, one_line_error
from test_gguf import write_tiny_gguf

from awqinfer.engine import hub

ARGS = ["--max-tokens", "4", "--temperature", "0", "--json", "Hello"]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A Llama GGUF file in llama.cpp's layout, with a byte-level tokenizer."""
    root = tmp_path_factory.mktemp("gguf")
    qwen = make_model(root / "qwen", "qwen2")
    config = tiny_config("llama", vocab_size=512)
    hf = write_checkpoint(root / "hf", config, random_weights(config, seed=5))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (hf / name).write_bytes((qwen / name).read_bytes())
    return write_tiny_gguf(root / "tiny.gguf", hf)


def imports(cache):
    return sorted(p.name for p in cache.iterdir() if p.name.startswith("gguf-"))


BUILD = "import sys, pathlib; from awqinfer.engine import hub; hub.build_from_gguf(*map(pathlib.Path, sys.argv[1:]))"


def build_in_a_fresh_process(gguf, target):
    """hub.build_from_gguf(gguf, target) in a process of its own."""
    built = subprocess.run([sys.executable, "-c", BUILD, str(gguf), str(target)], capture_output=True, text=True,
                           timeout=300)
    assert built.returncode == 0, built.stderr


def test_a_gguf_file_runs_and_is_imported_once_by_content(tiny_gguf, tmp_path):
    cache = tmp_path / "cache"
    env = {"AWQINFER_CACHE": str(cache)}
    first = cli("run", "--model", tiny_gguf, *ARGS, env=env)
    assert first.returncode == 0, first.stderr
    assert f"awqinfer: importing tiny.gguf once ({hub.DEFAULT_METHOD.upper()} 4-bit, group 64) into" in first.stderr
    assert f"quantize ({hub.DEFAULT_METHOD})" in first.stderr  # the default model's build, with its progress bar
    [imported] = imports(cache)
    assert imported == f"gguf-{hub.file_digest(tiny_gguf)[:20]}-{hub.default_recipe()}"
    # the import is the default model's pipeline: byte for byte the weights of build_from_gguf's build, and
    # the same reply. Both sides start in a fresh process: random weights make a greedy reply turn on
    # near-ties, so a reply computed in this long-lived test process may differ in the last ulp and token.
    reference = tmp_path / "reference"
    build_in_a_fresh_process(tiny_gguf, reference)
    weights = lambda d: {f.name: f.read_bytes() for f in sorted(Path(d).glob("*.safetensors"))}
    assert weights(reference) and weights(cache / imported) == weights(reference)
    again_reference = cli("run", "--model", reference, *ARGS)
    assert again_reference.returncode == 0 and json.loads(again_reference.stdout) == json.loads(first.stdout)

    renamed = shutil.copy(tiny_gguf, tmp_path / "same-bytes-other-name.gguf")
    again = cli("run", "--model", renamed, *ARGS, env=env)
    assert again.returncode == 0 and again.stdout == first.stdout
    assert "importing" not in again.stderr and imports(cache) == [imported]

    changed = tmp_path / "changed.gguf"
    changed.write_bytes(tiny_gguf.read_bytes() + b"\0" * 32)  # same model, other bytes: another key
    third = cli("run", "--model", changed, *ARGS, env=env)
    assert third.returncode == 0 and "importing changed.gguf once" in third.stderr
    assert len(imports(cache)) == 2


def test_what_cannot_be_imported_is_one_clear_line_and_leaves_nothing(tmp_path):
    cache = tmp_path / "cache"
    env = {"AWQINFER_CACHE": str(cache)}
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    proc = cli("run", "--model", broken, "Hello", env=env)
    assert proc.returncode == 1
    assert "not a readable GGUF file" in proc.stderr and "Traceback" not in proc.stderr
    assert not cache.exists() or not any(cache.iterdir())  # no checkpoint, no half-built folder

    missing = cli("run", "--model", tmp_path / "missing.gguf", "Hello", env=env)
    assert missing.returncode == 1
    one_line_error(missing, "missing.gguf", "no such GGUF file")

    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    other = cli("run", "--model", text, "Hello", env=env)
    assert other.returncode == 1
    one_line_error(other, "notes.txt", "not a GGUF file")


def test_unknown_names_mention_gguf_files():
    proc = cli("run", "--model", "no-such-model", "Hello")
    assert proc.returncode == 1
    one_line_error(proc, "a .gguf file")
