"""The inputs of ``run``: the Workers AI text-generation schema, checked field by field.

The schema (see the seed model pages) is a oneOf of two objects:

    Prompt:   prompt (string, 1..131072 chars), raw, lora, image, + the common fields
    Messages: messages ([{role, content}]), tools, functions, image, + the common fields
    common:   stream, max_tokens, temperature, top_p, top_k, seed,
              repetition_penalty, frequency_penalty, presence_penalty

Anything else is an InputError that names the field, the value and what is
allowed: an unknown key, a wrong type (a bool is not a number), NaN or inf, a
value out of range, both or neither of prompt/messages, no messages, ``raw`` with messages.
``lora``, ``tools``, ``functions`` and ``image`` are in the schema but not yet
implemented, so they are refused by name rather than silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import InputError
from .sampling import SamplingParams
from .schema import FIELDS, MAX_CHARS, describe_value

ROLES = ("system", "user", "assistant", "tool")
FLAGS = ("raw", "stream")
UNSUPPORTED = ("lora", "tools", "functions", "image")
PROMPT_FIELDS = frozenset({"prompt", "raw", "lora", "image", "stream", *FIELDS})
MESSAGES_FIELDS = frozenset({"messages", "tools", "functions", "image", "stream", *FIELDS})


@dataclass(frozen=True)
class Request:
    """Validated inputs: exactly one of prompt / messages, the flags, and the sampling parameters."""

    prompt: str | None
    messages: tuple[dict, ...] | None  # each {"role": str, "content": str}
    raw: bool
    stream: bool
    sampling: SamplingParams


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
    flags = {key: _flag(key, inputs[key]) for key in FLAGS if key in inputs}
    numbers = {key: field.check(inputs[key]) for key, field in FIELDS.items() if key in inputs}
    return Request(
        prompt=_text("prompt", inputs["prompt"], minimum=1) if "prompt" in inputs else None,
        messages=_messages(inputs["messages"]) if "messages" in inputs else None,
        raw=flags.get("raw", False),
        stream=flags.get("stream", False),
        sampling=SamplingParams(**numbers),
    )


def _flag(field: str, value) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{field}: got {describe_value(value)}; allowed: true or false")
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
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise InputError(f"{where}: got {describe_value(message)}; "
                             "allowed: an object with exactly 'role' and 'content'")
        if not isinstance(message["role"], str) or message["role"] not in ROLES:
            raise InputError(f"{where}.role: got {describe_value(message['role'])}; allowed: one of {', '.join(ROLES)}")
        out.append({"role": message["role"], "content": _text(f"{where}.content", message["content"])})
    return tuple(out)
