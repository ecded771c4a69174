"""``awqinfer run [--model M] PROMPT``: one completion, streamed to the terminal as it is generated.

``--inputs FILE`` takes Workers AI inputs as JSON instead (a ``messages`` conversation,
say); flags override its fields. ``--truncate`` lets a conversation longer than the
model's context lose its oldest turns, with a notice, instead of being refused.
"""

from __future__ import annotations

import json
import sys

from awqinfer.engine.llm import join_chunks

from .common import EXIT_INTERRUPTED, EXIT_USAGE, add_model_flags, add_sampling_flags, add_verbose_flag, fail, \
    load_model, sampling_inputs
from .generation import fit_conversation, stream_reply


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("run", help="generate a response to one prompt",
                              description="Generate a response to PROMPT (or to the Workers AI inputs of "
                                          "--inputs), streamed as it is generated.")
    p.add_argument("prompt", metavar="PROMPT", nargs="?", help="the prompt; '-' reads it from stdin")
    p.add_argument("--inputs", metavar="FILE", default=None,
                   help="Workers AI inputs as a JSON object, e.g. {\"messages\": [...]}, instead of PROMPT "
                        "('-' reads stdin); the flags below override its fields")
    add_model_flags(p)
    add_sampling_flags(p)
    p.add_argument("--raw", action="store_true", help="send PROMPT as is, without the chat template")
    p.add_argument("--truncate", action="store_true",
                   help="messages longer than the model's context lose their oldest turns (the system prompt "
                        "and the last message stay; a note on stderr says how many) instead of being refused")
    p.add_argument("--json", action="store_true", help="print the whole (non-streamed) result as JSON")
    add_verbose_flag(p)


def build_inputs(args) -> dict:
    """The ``run`` inputs of the seed schema for this command line (raises ValueError on a misuse)."""
    if (args.prompt is None) == (args.inputs is None):
        raise ValueError("give either PROMPT or --inputs FILE" if args.prompt is None else
                         "PROMPT and --inputs both give the inputs; use one")
    if args.raw and args.system is not None:
        raise ValueError("--raw sends the prompt without a chat template, so it cannot take --system")
    if args.inputs is not None:
        if args.raw or args.system is not None:
            raise ValueError("--raw and --system shape PROMPT; with --inputs, put 'raw' or a system message "
                             "in the JSON")
        inputs = read_json_inputs(args.inputs)
    else:
        prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
        if args.system is not None:
            inputs = {"messages": [{"role": "system", "content": args.system}, {"role": "user", "content": prompt}]}
        else:
            inputs = {"prompt": prompt, **({"raw": True} if args.raw else {})}
    if args.truncate and "messages" not in inputs:
        raise ValueError("--truncate drops whole turns of a conversation ('messages'); a prompt is never cut")
    return {**inputs, **sampling_inputs(args)}


def read_json_inputs(path: str) -> dict:
    """The JSON object in ``path`` ('-': stdin)."""
    text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    try:
        inputs = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--inputs {path}: not valid JSON ({e})") from None
    if not isinstance(inputs, dict):
        raise ValueError(f"--inputs {path}: got a JSON {type(inputs).__name__}; allowed: an object of Workers AI "
                         "inputs such as {\"messages\": [...]}")
    return inputs


def main(args) -> int:
    try:
        inputs = build_inputs(args)
    except ValueError as e:
        return fail(str(e), EXIT_USAGE)
    llm = load_model(args)
    if args.truncate:
        inputs["messages"] = fit_conversation(llm, inputs["messages"], inputs.get("max_tokens"))
    reply = stream_reply(llm, inputs, verbose=args.verbose, echo=not args.json)
    if reply.interrupted:
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(join_chunks(reply.chunks), ensure_ascii=False))
    return 0
