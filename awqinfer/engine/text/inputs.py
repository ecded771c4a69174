"""The inputs of ``run``: the Workers AI text-generation schema, checked field by field.

The schema (see the seed model pages) is a oneOf of two objects:

    Prompt:   prompt (string, 1..131072 chars), raw, lora, image, + the common fields
    Messages: messages ([{role, content}]), tools, functions, image, + the common fields
    common:   stream, max_tokens, temperature, top_p, top_k, seed,
              repetition_penalty, frequency_penalty, presence_penalty,
              and Workers AI's later response_format (JSON mode)

A message may also carry what a tool-calling conversation needs: an assistant turn its
``tool_calls`` (Workers AI's {name, arguments} or OpenAI's {id, type, function}), its content
then optional; a tool turn its ``tool_call_id`` and ``name``. ``tools`` and ``functions`` are
checked by tools.py.

Anything else is an InputError that names the field, the value and what is
allowed: an unknown key, a wrong type (a bool is not a number), NaN or inf, a
value out of range, both or neither of prompt/messages, no messages, ``raw`` with messages.
``lora`` names a LoRA adapter (whether the model has it loaded is the LLM's check); the
schema lists it with ``prompt``, and it is taken with ``messages`` too, as Workers AI's
LoRA examples do. ``image`` is in the schema but text models cannot take it, so it is
refused by name rather than silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import json

from ...errors import InputError
from .constraints import check_json
from .sampling import SamplingParams
from .schema import FIELDS, MAX_CHARS, describe_value
from .tools import Tool, parse_tools

ROLES = ("system", "user", "assistant", "tool")
FLAGS = ("raw", "stream")
MAX_ADAPTER_NAME = 256  # characters of a ``lora`` name
UNSUPPORTED = ("image",)
PROMPT_FIELDS = frozenset({"prompt", "raw", "lora", "image", "stream", "response_format", *FIELDS})
MESSAGES_FIELDS = frozenset({"messages", "lora", "tools", "functions", "image", "stream", "response_format", *FIELDS})
ANY_OBJECT = {"type": "object"}  # the schema of response_format {"type": "json_object"}


@dataclass(frozen=True)
class Request:
    """Validated inputs: exactly one of prompt / messages, the flags, and the sampling parameters."""

    prompt: str | None
    messages: tuple[dict, ...] | None  # each {"role": str, "content": str}
    raw: bool
    stream: bool
    sampling: SamplingParams
    lora: str | None = None  # a LoRA adapter's name
    json_schema: dict | None = None  # response_format: the JSON Schema the response follows (None: text)
    tools: tuple[Tool, ...] = ()  # tools and functions, as tools

    @property
    def chat(self) -> list[dict] | None:
        """The conversation the chat template renders: the messages, or the prompt as one user turn;
        None for a raw prompt, which is encoded as it is."""
        if self.messages is not None:
            return list(self.messages)
        return None if self.raw else [{"role": "user", "content": self.prompt}]


def parse_inputs(inputs) -> Request:
    """Check ``inputs`` against the schema and return a Request; raise InputError on the first problem."""
    if not isinstance(inputs, dict):
        raise InputError(f"inputs: got {describe_value(inputs)}; "
                         "allowed: an object (dict) with 'prompt' or 'messages'")
    for key in inputs:
        if key not in PROMPT_FIELDS | MESSAGES_FIELDS:
            allowed = ", ".join(sorted(PROMPT_FIELDS | MESSAGES_FIELDS))
            raise InputError(f"unknown field {key!r} (value {describe_value(inputs[key])}); "
                             f"allowed fields: {allowed}")
    for key in UNSUPPORTED:
        if key in inputs:
            raise InputError(f"{key}: not supported by this model/engine yet (got {describe_value(inputs[key])})")
    if ("prompt" in inputs) == ("messages" in inputs):
        which = "both" if "prompt" in inputs else "neither"
        raise InputError(f"inputs: got {which} of 'prompt' and 'messages'; allowed: exactly one of them")
    if "messages" in inputs and "raw" in inputs:
        raise InputError(f"raw: got {describe_value(inputs['raw'])} with 'messages'; allowed: only with 'prompt' "
                         "(messages always go through the chat template)")
    if "prompt" in inputs and ({"tools", "functions"} & set(inputs)):
        field = "tools" if "tools" in inputs else "functions"
        raise InputError(f"{field}: only with 'messages' (the Messages form of the schema), not with 'prompt'")
    flags = {key: _flag(key, inputs[key]) for key in FLAGS if key in inputs}
    numbers = {key: field.check(inputs[key]) for key, field in FIELDS.items() if key in inputs}
    request = Request(
        prompt=_text("prompt", inputs["prompt"], minimum=1) if "prompt" in inputs else None,
        messages=_messages(inputs["messages"]) if "messages" in inputs else None,
        raw=flags.get("raw", False),
        stream=flags.get("stream", False),
        sampling=SamplingParams(**numbers),
        lora=_lora(inputs["lora"]) if "lora" in inputs else None,
        json_schema=_response_format(inputs["response_format"]) if "response_format" in inputs else None,
        tools=parse_tools(inputs.get("tools"), inputs.get("functions")),
    )
    if request.json_schema is not None and request.tools:
        raise InputError("response_format: JSON mode cannot be combined with tools or functions "
                         "(tool calls have their own grammar); allowed: one or the other")
    return request


def _response_format(value) -> dict | None:
    """The JSON Schema the output follows: {"type": "json_object"} any object, {"type": "json_schema",
    "json_schema": S} S; {"type": "text"} None (free text)."""
    kinds = ("{'type': 'json_object'}, {'type': 'json_schema', 'json_schema': <a JSON Schema object>} "
             "or {'type': 'text'}")
    if not isinstance(value, dict) or value.get("type") not in ("json_object", "json_schema", "text"):
        raise InputError(f"response_format: got {describe_value(value)}; allowed: {kinds}")
    expected = {"type", "json_schema"} if value["type"] == "json_schema" else {"type"}
    if set(value) != expected:
        raise InputError(f"response_format: got the keys {sorted(map(str, value))} for {value['type']!r}; "
                         f"allowed: exactly {sorted(expected)}")
    if value["type"] == "text":
        return None
    if value["type"] == "json_object":
        return ANY_OBJECT
    schema = value["json_schema"]
    if not isinstance(schema, dict):
        raise InputError(f"response_format.json_schema: got {describe_value(schema)}; allowed: a JSON Schema object")
    return json.loads(check_json(schema, "response_format.json_schema"))  # a private copy of plain JSON


def _flag(field: str, value) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{field}: got {describe_value(value)}; allowed: true or false")
    return value


def _lora(value) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_ADAPTER_NAME:
        raise InputError(f"lora: got {describe_value(value)}; allowed: the name of a loaded LoRA adapter "
                         f"(a non-empty string of at most {MAX_ADAPTER_NAME} characters)")
    return value


def _text(field: str, value, minimum: int = 0) -> str:
    if not isinstance(value, str) or not minimum <= len(value) <= MAX_CHARS:
        shown = describe_value(value) if not isinstance(value, str) else f"a string of {len(value)} characters"
        raise InputError(f"{field}: got {shown}; allowed: a string of {minimum}..{MAX_CHARS} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate: JSON can spell it ("\ud800"), the tokenizer cannot take it
        raise InputError(f"{field}: got a string with an unpaired surrogate {value[e.start]!r} at {e.start}; "
                         "allowed: valid Unicode text") from None
    return value


def _messages(value) -> tuple[dict, ...]:
    if not isinstance(value, list):
        raise InputError(f"messages: got {describe_value(value)}; allowed: an array of {{role, content}} objects")
    if not value:  # a bare chat template is no conversation: there is nothing to answer
        raise InputError("messages: got an empty array; allowed: at least one {role, content} object")
    return tuple(_message(f"messages[{i}]", message) for i, message in enumerate(value))


def _message(where: str, message) -> dict:
    """One message: {role, content}, plus tool_calls (assistant) or tool_call_id / name (tool)."""
    role = message.get("role") if isinstance(message, dict) else None
    extra = {"assistant": {"tool_calls"}, "tool": {"tool_call_id", "name"}}.get(role, set())
    required = {"role"} if role == "assistant" and "tool_calls" in message else {"role", "content"}
    if not isinstance(message, dict) or not required <= set(message) <= {"role", "content"} | extra:
        also = f" (and optionally {' and '.join(sorted(extra))})" if extra else ""
        raise InputError(f"{where}: got {describe_value(message)}; "
                         f"allowed: an object with exactly 'role' and 'content'{also}")
    if not isinstance(role, str) or role not in ROLES:
        raise InputError(f"{where}.role: got {describe_value(role)}; allowed: one of {', '.join(ROLES)}")
    calls = _tool_calls(f"{where}.tool_calls", message["tool_calls"]) if "tool_calls" in message else None
    content = message.get("content")
    out = {"role": role, "content": "" if calls and content is None else _text(f"{where}.content", content)}
    if calls:
        out["tool_calls"] = calls
    for key in ("tool_call_id", "name"):
        if key in message:
            out[key] = _text(f"{where}.{key}", message[key], minimum=1)
    return out


def _tool_calls(where: str, value) -> list[dict]:
    """An assistant turn's calls as {name, arguments (an object)}: Workers AI's shape or OpenAI's
    ({id, type: "function", function: {name, arguments: JSON text}})."""
    if not isinstance(value, list):
        raise InputError(f"{where}: got {describe_value(value)}; allowed: an array of tool calls")
    out = []
    for i, call in enumerate(value):
        at = f"{where}[{i}]"
        if isinstance(call, dict) and call.get("type") == "function" and set(call) <= {"id", "type", "function"}:
            call, at = call.get("function"), f"{at}.function"
        if not isinstance(call, dict) or set(call) != {"name", "arguments"} or not isinstance(call["name"], str):
            raise InputError(f"{at}: got {describe_value(call)}; allowed: an object with 'name' and 'arguments'")
        arguments = call["arguments"]
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                raise InputError(f"{at}.arguments: got {describe_value(arguments)}; allowed: a JSON object") from None
        if not isinstance(arguments, dict):
            raise InputError(f"{at}.arguments: got {describe_value(arguments)}; allowed: an object (or its JSON text)")
        out.append({"name": _text(f"{at}.name", call["name"], minimum=1),
                    "arguments": json.loads(check_json(arguments, f"{at}.arguments"))})
    return out
