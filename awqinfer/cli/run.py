"""``awqinfer run [--model M] PROMPT``: one completion, streamed to the terminal as it is generated.

``--json-schema FILE`` / ``--json-object`` constrain the output to JSON (``response_format``);
``--tools FILE`` offers tools, and the calls the model makes are printed after its text, one
JSON object {"name", "arguments"} a line.
"""

from __future__ import annotations

import json
import sys

from awqinfer import InputError

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
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json-schema", metavar="FILE", default=None,
                        help="the output is JSON valid under the JSON Schema in FILE (response_format json_schema)")
    output.add_argument("--json-object", action="store_true",
                        help="the output is a JSON object (response_format json_object)")
    output.add_argument("--tools", metavar="FILE", default=None,
                        help="a JSON array of tools ({name, description, parameters} or OpenAI's "
                             "{type: function, function}) the model may call; calls print as JSON lines")
    p.add_argument("--tool-choice", default=None, metavar="MODE",
                   help="with --tools: auto (default), none, required, or a tool's name (always call it)")


def build_inputs(args, prompt: str) -> dict:
    """The ``run`` inputs of the seed schema for this command line."""
    inputs = sampling_inputs(args)
    if args.system is not None or args.tools is not None:  # tools come with the Messages form only
        system = [] if args.system is None else [{"role": "system", "content": args.system}]
        inputs["messages"] = [*system, {"role": "user", "content": prompt}]
    else:
        inputs["prompt"] = prompt
    if args.raw:
        inputs["raw"] = True
    if args.json_schema is not None:
        inputs["response_format"] = {"type": "json_schema", "json_schema": read_json(args.json_schema, "--json-schema")}
    elif args.json_object:
        inputs["response_format"] = {"type": "json_object"}
    if args.tools is not None:
        inputs["tools"] = read_json(args.tools, "--tools")
    return inputs


def tool_choice(args):
    """--tool-choice as run()'s tool_choice: a mode, or a tool's name as OpenAI names one."""
    if args.tool_choice is None or args.tool_choice in ("auto", "none", "required"):
        return args.tool_choice
    return {"type": "function", "function": {"name": args.tool_choice}}


def read_json(path: str, flag: str):
    """The JSON in file ``path``; a file that is not JSON is an InputError naming the flag."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return json.loads(text)
    except ValueError as e:
        raise InputError(f"{flag}: {path} is not JSON ({e})") from None


def main(args) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if args.raw and (args.system is not None or args.tools is not None):
        return fail("--raw sends the prompt without a chat template, so it cannot take --system or --tools",
                    EXIT_USAGE)
    if args.tool_choice is not None and args.tools is None:
        return fail("--tool-choice needs --tools", EXIT_USAGE)
    inputs = build_inputs(args, prompt)  # files read before the model loads
    llm = load_model(args)
    if args.json:
        print(json.dumps(llm.run(inputs, tool_choice=tool_choice(args)), ensure_ascii=False))
        return 0
    stream = llm.run({**inputs, "stream": True}, tool_choice=tool_choice(args))
    written = False  # anything on the terminal yet: a tool call then starts a line of its own
    try:
        for chunk in stream:
            write(chunk["response"])
            written = written or bool(chunk["response"])
            for call in chunk.get("tool_calls", ()):
                write(("\n" if written else "") + json.dumps(call, ensure_ascii=False))
                written = True
    except KeyboardInterrupt:
        stream.close()
        write("\n")
        return EXIT_INTERRUPTED
    write("\n")
    return 0
