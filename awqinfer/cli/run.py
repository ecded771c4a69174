"""``awqinfer run [--model M] PROMPT``: one completion, streamed to the terminal as it is generated."""

from __future__ import annotations

import json
import sys

from .common import EXIT_INTERRUPTED, EXIT_USAGE, add_model_flags, add_sampling_flags, fail, load_model, \
    sampling_inputs, write


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("run", help="generate a response to one prompt",
                              description="Generate a response to PROMPT, streamed as it is generated.")
    p.add_argument("prompt", metavar="PROMPT", help="the prompt; '-' reads it from stdin")
    add_model_flags(p)
    add_sampling_flags(p)
    p.add_argument("--raw", action="store_true", help="send PROMPT as is, without the chat template")
    p.add_argument("--json", action="store_true", help="print the whole (non-streamed) result as JSON")


def build_inputs(args, prompt: str) -> dict:
    """The ``run`` inputs of the seed schema for this command line."""
    inputs = sampling_inputs(args)
    if args.system is not None:
        inputs["messages"] = [{"role": "system", "content": args.system}, {"role": "user", "content": prompt}]
    else:
        inputs["prompt"] = prompt
    if args.raw:
        inputs["raw"] = True
    return inputs


def main(args) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if args.raw and args.system is not None:
        return fail("--raw sends the prompt without a chat template, so it cannot take --system", EXIT_USAGE)
    llm = load_model(args)
    inputs = build_inputs(args, prompt)
    if args.json:
        print(json.dumps(llm.run(inputs), ensure_ascii=False))
        return 0
    stream = llm.run({**inputs, "stream": True})
    try:
        for chunk in stream:
            write(chunk["response"])
    except KeyboardInterrupt:
        stream.close()
        write("\n")
        return EXIT_INTERRUPTED
    write("\n")
    return 0
