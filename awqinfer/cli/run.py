"""``awqinfer run [--model M] PROMPT``: one completion, streamed to the terminal as it is generated.

``--inputs FILE`` takes Workers AI inputs as JSON instead (a ``messages`` conversation,
say); flags override its fields. ``--truncate`` lets a conversation longer than the
model's context lose its oldest turns, with a notice, instead of being refused.
``--json-schema FILE`` / ``--json-object`` constrain the output to JSON (``response_format``);
``--tools FILE`` offers tools, and the calls the model makes are printed after its text, one
JSON object {"name", "arguments"} a line.
"""

from __future__ import annotations

import json
import sys

from awqinfer.engine.llm import join_chunks, json_mode

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
    p.add_argument("--lora-dir", metavar="DIR", default=None,
                   help="a folder of PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors), one per "
                        "subfolder, each named by its subfolder")
    p.add_argument("--lora", metavar="NAME", default=None, help="the adapter of --lora-dir to apply")
    p.add_argument("--raw", action="store_true", help="send PROMPT as is, without the chat template")
    p.add_argument("--truncate", action="store_true",
                   help="messages longer than the model's context lose their oldest turns (the system prompt "
                        "and the last message stay; a note on stderr says how many) instead of being refused")
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
                   help="with tools: auto (default), none, required, or a tool's name (always call it)")
    add_verbose_flag(p)


def build_inputs(args) -> dict:
    """The ``run`` inputs of the seed schema for this command line (raises ValueError on a misuse)."""
    if (args.prompt is None) == (args.inputs is None):
        raise ValueError("give either PROMPT or --inputs FILE" if args.prompt is None else
                         "PROMPT and --inputs both give the inputs; use one")
    if args.raw and (args.system is not None or args.tools is not None):
        raise ValueError("--raw sends the prompt without a chat template, so it cannot take --system or --tools")
    if args.inputs is not None:
        if args.raw or args.system is not None:
            raise ValueError("--raw and --system shape PROMPT; with --inputs, put 'raw' or a system message "
                             "in the JSON")
        inputs = read_json("--inputs", args.inputs)
        if not isinstance(inputs, dict):
            raise ValueError(f"--inputs {args.inputs}: got a JSON {type(inputs).__name__}; allowed: an object of "
                             "Workers AI inputs such as {\"messages\": [...]}")
    else:
        prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
        system = [] if args.system is None else [{"role": "system", "content": args.system}]
        if system or args.tools is not None:  # tools come with the Messages form only
            inputs = {"messages": [*system, {"role": "user", "content": prompt}]}
        else:
            inputs = {"prompt": prompt, **({"raw": True} if args.raw else {})}
    if args.truncate and "messages" not in inputs:
        raise ValueError("--truncate drops whole turns of a conversation ('messages'); a prompt is never cut")
    if getattr(args, "lora", None) is not None:  # `trace` shares this function without the LoRA flags
        if args.lora_dir is None:
            raise ValueError("--lora NAME picks an adapter of --lora-dir DIR; give --lora-dir too")
        inputs["lora"] = args.lora
    if args.json_schema is not None:
        inputs["response_format"] = {"type": "json_schema", "json_schema": read_json("--json-schema", args.json_schema)}
    elif args.json_object:
        inputs["response_format"] = {"type": "json_object"}
    elif args.tools is not None:
        inputs["tools"] = read_json("--tools", args.tools)
    if args.tool_choice is not None and "tools" not in inputs and "functions" not in inputs:
        raise ValueError("--tool-choice needs tools (--tools, or 'tools' / 'functions' in --inputs)")
    return {**inputs, **sampling_inputs(args)}


def read_json(flag: str, path: str):
    """The JSON in file ``path`` ('-': stdin); ValueError naming ``flag`` if it is not JSON."""
    text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{flag} {path}: not valid JSON ({e})") from None


def run_options(args) -> dict:
    """LLM.run's keyword options from the flags: --tool-choice, a mode or a tool's name as OpenAI names one."""
    if args.tool_choice is None or args.tool_choice in ("auto", "none", "required"):
        return {"tool_choice": args.tool_choice}
    return {"tool_choice": {"type": "function", "function": {"name": args.tool_choice}}}


def main(args) -> int:
    try:
        inputs = build_inputs(args)
    except ValueError as e:
        return fail(str(e), EXIT_USAGE)
    llm = load_model(args)
    if args.truncate:
        inputs["messages"] = fit_conversation(llm, inputs["messages"], inputs.get("max_tokens"), inputs.get("tools"),
                                              inputs.get("functions"))
    reply = stream_reply(llm, inputs, verbose=args.verbose, echo=not args.json, options=run_options(args))
    if reply.interrupted:
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(join_chunks(reply.chunks, parse_json=json_mode(inputs)), ensure_ascii=False))
    return 0
