"""What the subcommands share: the one-line-error parser, model and sampling flags, error reporting."""

from __future__ import annotations

import argparse
import sys

from numba.core import event
from tqdm.auto import tqdm

import awqinfer
from awqinfer.engine.model.kv_budget import parse_bytes
from awqinfer.engine.model.threads import resolve_threads
from awqinfer.engine.text.scheduler import DEFAULT_MAX_BATCH
from awqinfer.engine.text.schema import SAMPLING_FIELDS

EXIT_ERROR = 1  # the model or a file could not be used
EXIT_USAGE = 2  # a bad flag value or bad inputs, as argparse does
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT
# Seconds Numba spends compiling the CPU kernels on a first run of the default model (build and
# reply) on this project's 2-core machine, measured with Numba's compile events (README, "Speed").
COMPILE_SECONDS = 60


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line ('awqinfer run: error: ...') and exit status 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def ranged(kind, lo, hi):
    """An argparse type: a number of ``kind`` within lo..hi (None: unbounded)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if value != value or (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    return parse


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=None,
                   help="local checkpoint directory, .gguf file (imported once), Hugging Face repo id, or Workers "
                        "AI name (default: the embedded SmolLM2-135M-Instruct; see `awqinfer models`)")
    add_load_flags(p)


def byte_size(text: str) -> int:
    """An argparse type: a size such as 2G, 512MiB or a number of bytes (kv_budget.parse_bytes)."""
    try:
        return parse_bytes(text)
    except awqinfer.InputError:
        raise argparse.ArgumentTypeError(f"expected a size such as 4GB, 512MiB or a number of bytes, got {text!r}")


def add_load_flags(p: argparse.ArgumentParser, batching: bool = False) -> None:
    """How a model is loaded: --device, --threads, --kv-budget; with ``batching`` (a server) also
    --max-batch and --max-queue, the bounds of each model's scheduler."""
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs (default: cpu)")
    p.add_argument("--threads", type=ranged(int, 1, None), default=None, metavar="N",
                   help=f"CPU threads for the kernels (default: the cores this process may use, here "
                        f"{resolve_threads(None)}); on a busy machine fewer can be much faster")
    p.add_argument("--kv-budget", type=byte_size, default=None, metavar="BYTES",
                   help="KV cache memory all running requests may hold together, e.g. 2G or 512MiB (default: half "
                        "the memory available); a request that would exceed it waits, one larger than it is refused")
    if batching:
        p.add_argument("--max-batch", type=ranged(int, 1, None), default=None, metavar="N",
                       help=f"requests decoded together in one batch, per model (default: {DEFAULT_MAX_BATCH}); "
                            "more wait in the queue")
        p.add_argument("--max-queue", type=ranged(int, 0, None), default=32, metavar="N",
                       help="requests waiting for a place in the batch, per model; more are refused (HTTP 429) "
                            "(default: 32)")


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """One flag per numeric field of the schema (text/schema.py): --max-tokens, --temperature, ..."""
    for field in SAMPLING_FIELDS:
        kind = int if field.integer else float
        unset = "a new one each run" if field.name == "seed" else "off"
        default = unset if field.default is None else field.default
        p.add_argument("--" + field.name.replace("_", "-"), dest=field.name, type=ranged(kind, field.low, field.high),
                       default=None, metavar="N" if field.integer else "X",
                       help=f"{field.help}; {field.allowed}, default {default}")
    p.add_argument("--system", default=None, help="a system message put before the prompt")


def add_verbose_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", "-v", action="store_true",
                   help="after each reply, print on stderr: prompt tokens, time to first token, decoding speed, "
                        "completion tokens and the finish reason")


def sampling_inputs(args) -> dict:
    """The schema fields the user set, and only those (the rest keep the schema's defaults)."""
    return {f.name: getattr(args, f.name) for f in SAMPLING_FIELDS if getattr(args, f.name) is not None}


def load_model(args):
    """``awqinfer.load`` for --model and the load flags (add_load_flags), and --lora-dir where the command has it."""
    return awqinfer.load(args.model, device=args.device, threads=args.threads, kv_budget=args.kv_budget,
                         lora_dir=getattr(args, "lora_dir", None))


def fail(message: str, code: int = EXIT_ERROR) -> int:
    print(f"awqinfer: error: {message}", file=sys.stderr)
    return code


def note(text: str) -> None:
    """A one-line note on stderr, drawn above any progress bar."""
    tqdm.write(f"awqinfer: {text}", file=sys.stderr)


class CompileNotice(event.Listener):
    """Says once, when Numba really compiles a CPU kernel (its cache is cold), what the wait is.

    Numba compiles on a kernel's first call; a warm on-disk cache loads instead and fires no
    compile event, so the note appears exactly on a first run or after the kernels changed.
    """

    def __init__(self):
        self.said = False

    def on_start(self, ev) -> None:
        dispatcher = ev.data["dispatcher"]
        if self.said or "cuda" in type(dispatcher).__module__:  # GPU kernels: not what the note is about
            return
        if not dispatcher.py_func.__module__.startswith("awqinfer."):  # numba's helpers (typed.List): uncached, quick
            return
        self.said = True
        note(f"compiling the kernels once (Numba; about {COMPILE_SECONDS} s on two cores); later runs reuse them")

    def on_end(self, ev) -> None:
        pass


def compile_notice():
    """A context in which Numba's first compile is announced on stderr (see CompileNotice)."""
    return event.install_listener("numba:compile", CompileNotice())
