"""``awqinfer``: the command line. Each subcommand is a module with ``add_parser`` and ``main``."""

from __future__ import annotations

import sys

import awqinfer

from . import chat, convert, models, quantize, run, serve, trace
from . import eval as evaluate
from .common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, Parser, compile_notice, fail

COMMANDS = {"run": run, "chat": chat, "serve": serve, "models": models, "convert": convert,  # name -> module
            "quantize": quantize, "eval": evaluate, "trace": trace}


def build_parser() -> Parser:
    parser = Parser(prog="awqinfer", description="Run AWQ 4-bit (and int8) LLMs locally with the Workers AI "
                                                 "text-generation interface.")
    parser.add_argument("--version", action="version", version=f"awqinfer {awqinfer.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for command in COMMANDS.values():
        command.add_parser(sub)
    parser.set_defaults(subparsers=sub.choices)  # name -> its parser, to report an error as that command
    return parser


def parse_args(argv: list[str] | None = None):
    """The command line parsed; an unknown flag is reported by its subcommand ('awqinfer run: error: ...')."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        args.subparsers[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with compile_notice():
            return COMMANDS[args.command].main(args)
    except awqinfer.InputError as e:
        return fail(str(e), EXIT_USAGE)
    except awqinfer.AwqinferError as e:
        return fail(str(e), EXIT_ERROR)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `awqinfer run ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    except OSError as e:
        return fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e), EXIT_ERROR)
