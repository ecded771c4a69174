"""What the subcommands share: the one-line-error parser, model and sampling flags, error reporting."""

from __future__ import annotations

import argparse
import sys

import awqinfer

# The sampling fields of the seed schema (API.md): flag -> (key, type, min, max).
SAMPLING_FLAGS = {
    "--max-tokens": ("max_tokens", int, 1, None),
    "--temperature": ("temperature", float, 0, 5),
    "--top-p": ("top_p", float, 0, 2),
    "--top-k": ("top_k", int, 1, 50),
    "--seed": ("seed", int, 1, 9999999999),
    "--repetition-penalty": ("repetition_penalty", float, 0, 2),
    "--frequency-penalty": ("frequency_penalty", float, 0, 2),
    "--presence-penalty": ("presence_penalty", float, 0, 2),
}

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
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs (default: cpu)")


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    for flag, (key, kind, lo, hi) in SAMPLING_FLAGS.items():
        p.add_argument(flag, dest=key, type=ranged(kind, lo, hi), default=None, metavar="N" if kind is int else "X",
                       help=f"{key} ({'integer' if kind is int else 'number'}"
                            f"{'' if lo is None else f', {lo}..{hi}' if hi is not None else f', >= {lo}'})")
    p.add_argument("--system", default=None, help="a system message put before the prompt")


def sampling_inputs(args) -> dict:
    """The schema fields the user set, and only those (the rest keep the schema's defaults)."""
    keys = [key for key, *_ in SAMPLING_FLAGS.values()]
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def load_model(args):
    """``awqinfer.load`` for --model/--device."""
    return awqinfer.load(args.model, device=args.device)


def fail(message: str, code: int = EXIT_ERROR) -> int:
    print(f"awqinfer: error: {message}", file=sys.stderr)
    return code


def write(text: str) -> None:
    """Print a piece of streamed text at once."""
    sys.stdout.write(text)
    sys.stdout.flush()
