"""What the subcommands share: the one-line-error parser, model and sampling flags, error reporting."""

from __future__ import annotations

import argparse
import sys

import awqinfer
from awqinfer.engine.model.threads import resolve_threads
from awqinfer.engine.text.schema import SAMPLING_FIELDS

EXIT_ERROR = 1  # the model or a file could not be used
EXIT_USAGE = 2  # a bad flag value or bad inputs, as argparse does
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


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
                   help="local checkpoint directory, Hugging Face repo id, or Workers AI name "
                        "(default: the embedded SmolLM2-135M-Instruct; see `awqinfer models`)")
    add_compute_flags(p)


def add_compute_flags(p: argparse.ArgumentParser) -> None:
    """--device and --threads: where and on how many CPU threads the model computes."""
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs (default: cpu)")
    p.add_argument("--threads", type=ranged(int, 1, None), default=None, metavar="N",
                   help=f"CPU threads for the kernels (default: the cores this process may use, here "
                        f"{resolve_threads(None)}); on a busy machine fewer can be much faster")


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """One flag per numeric field of the schema (text/schema.py): --max-tokens, --temperature, ..."""
    for field in SAMPLING_FIELDS:
        kind = int if field.integer else float
        default = "off" if field.default is None else field.default
        p.add_argument("--" + field.name.replace("_", "-"), dest=field.name, type=ranged(kind, field.low, field.high),
                       default=None, metavar="N" if field.integer else "X",
                       help=f"{field.help} ({field.allowed}; default {default})")
    p.add_argument("--system", default=None, help="a system message put before the prompt")


def sampling_inputs(args) -> dict:
    """The schema fields the user set, and only those (the rest keep the schema's defaults)."""
    return {f.name: getattr(args, f.name) for f in SAMPLING_FIELDS if getattr(args, f.name) is not None}


def load_model(args):
    """``awqinfer.load`` for --model/--device/--threads."""
    return awqinfer.load(args.model, device=args.device, threads=args.threads)


def fail(message: str, code: int = EXIT_ERROR) -> int:
    print(f"awqinfer: error: {message}", file=sys.stderr)
    return code


def write(text: str) -> None:
    """Print a piece of streamed text at once."""
    sys.stdout.write(text)
    sys.stdout.flush()
