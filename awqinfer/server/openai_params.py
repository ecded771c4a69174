"""OpenAI request bodies -> Workers AI inputs, parameter by parameter, the mapping written down.

    OpenAI parameter               Workers AI input         notes
    model                          (the path's model)       required; any name awqinfer.load takes
    messages (chat)                messages                 "developer" is a system message; content may be
                                                            a string or text parts (joined with newlines)
    prompt (completions)           prompt, raw: true        a string or a list of one string; no chat template
    max_completion_tokens,         max_tokens               >= 1; both given: they must agree; neither: the
      max_tokens                                            Workers AI default, 256
    temperature                    temperature              OpenAI's 0..2 (0 is greedy); omitted: 0.6 (Workers AI)
    top_p                          top_p                    OpenAI's 0..1
    frequency_penalty,             the same                 OpenAI's rule (logit -= count*f + present*p), but
      presence_penalty                                      0..2: the negative half of OpenAI's -2..2 is refused
    seed                           seed                     1..9999999999 (the Workers AI range)
    top_k, repetition_penalty      the same                 extensions (as vLLM takes them; `extra_body`)
    stop                           (done here)              a string or up to 4; the text ends before the first
    stream, stream_options         (done here)              stream_options: {"include_usage": bool}, with stream
    response_format                response_format          json_schema's "schema" is Workers AI's json_schema
    tools                          tools                    OpenAI's {type: "function", function} shape
    tool_choice,                   LLM.run's arguments      "auto", "none", "required" or a named function;
      parallel_tool_calls                                   false: one call at most
    messages[].tool_calls,         the same                 an assistant turn's calls (content may be null),
      messages[].tool_call_id                               a tool turn's result

Accepted because they never change the output: ``user``, ``metadata``, ``safety_identifier``,
``prompt_cache_key``. Every other parameter is accepted only with the value that asks for
nothing (``n`` 1, ``logprobs`` false, the legacy ``functions`` [], ...) and is otherwise a 400
naming it; an unknown parameter is a 400 too, as OpenAI answers it. ``null`` stands for "not
given" everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InputError
from ..frontend import FIELDS, check_number, describe_value
from .web import bad_input

PASSIVE = {"user", "metadata", "safety_identifier", "prompt_cache_key"}
NEUTRAL = {  # parameter -> (accepted value test, the allowed values in words)
    "n": (lambda v: type(v) is int and v == 1, "1 (one choice per request)"),
    "logprobs": (lambda v: v is False or (type(v) is int and v == 0), "false (log probabilities are not returned)"),
    "top_logprobs": (lambda v: type(v) is int and v == 0, "0 (log probabilities are not returned)"),
    "logit_bias": (lambda v: v == {}, "{} (logit bias is not supported)"),
    "functions": (lambda v: v == [], "[] (the legacy functions are not supported: give them as tools)"),
    "function_call": (lambda v: v in ("none", "auto"), '"none" or "auto" (legacy: use tool_choice)'),
    "modalities": (lambda v: v == ["text"], '["text"]'),
    "store": (lambda v: v is False, "false (completions are not stored)"),
    "service_tier": (lambda v: v in ("auto", "default"), '"auto" or "default"'),
    "echo": (lambda v: v is False, "false"),
    "suffix": (lambda v: v == "", '"" (insertion is not supported)'),
    "best_of": (lambda v: type(v) is int and v == 1, "1"),
    **{name: (lambda v: False, "null (not supported)")
       for name in ("audio", "prediction", "reasoning_effort", "verbosity", "web_search_options")},
}
COMMON = {"model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "frequency_penalty",
          "presence_penalty", "seed", "stop", "top_k", "repetition_penalty"}
CHAT_PARAMS = (COMMON | {"messages", "max_completion_tokens", "response_format", "tools", "tool_choice",
                         "parallel_tool_calls"} | PASSIVE | (set(NEUTRAL) - {"echo", "suffix", "best_of"}))
COMPLETION_PARAMS = COMMON | {"prompt", "user", "logit_bias", "logprobs", "n", "echo", "suffix", "best_of"}
RANGES = {"temperature": (0, 2), "top_p": (0, 1), "frequency_penalty": (-2, 2), "presence_penalty": (-2, 2)}
MAX_STOPS = 4


@dataclass(frozen=True)
class OpenAIRequest:
    """An OpenAI request as the server runs it: Workers AI inputs, plus what the route does itself."""

    model: str
    inputs: dict  # Workers AI inputs (without "stream": the route streams or not)
    stream: bool
    include_usage: bool
    stop: tuple[str, ...]
    options: dict = field(default_factory=dict)  # LLM.run's keyword arguments: tool_choice, parallel_tool_calls


def chat_request(body) -> OpenAIRequest:
    """A /v1/chat/completions body -> OpenAIRequest; a 400 naming the parameter on anything we cannot honour."""
    common = _common(body, CHAT_PARAMS)
    sampling = common.pop("inputs")
    if body.get("messages") is None:
        raise bad_input("messages: required", "messages")
    fmt = _response_format(body.get("response_format"))
    tools = {"tools": body["tools"]} if body.get("tools") else {}  # [] asks for nothing; the engine checks each tool
    options = {name: body[name] for name in ("tool_choice", "parallel_tool_calls") if body.get(name) is not None}
    return OpenAIRequest(inputs={"messages": _messages(body["messages"]), **sampling, **fmt, **tools},
                         options=options, **common)


def _response_format(value) -> dict:
    """OpenAI's response_format -> Workers AI's: {"type": "json_schema", "json_schema": {"name", "schema",
    "strict"}} gives the schema itself as Workers AI's json_schema; json_object stays; text (or null) is free text.
    The engine checks the schema (InputError naming response_format.json_schema)."""
    if value is None or value == {"type": "text"}:
        return {}
    if value == {"type": "json_object"}:
        return {"response_format": value}
    if isinstance(value, dict) and value.get("type") == "json_schema" and isinstance(value.get("json_schema"), dict) \
            and isinstance(value["json_schema"].get("schema"), dict):
        return {"response_format": {"type": "json_schema", "json_schema": value["json_schema"]["schema"]}}
    raise bad_input(f"response_format: got {describe_value(value)}; allowed: {{\"type\": \"text\"}}, "
                    "{\"type\": \"json_object\"} or {\"type\": \"json_schema\", \"json_schema\": "
                    "{\"name\": ..., \"schema\": {...}}}", "response_format")


def completion_request(body) -> OpenAIRequest:
    """A /v1/completions body -> OpenAIRequest (the prompt runs raw, without the chat template)."""
    common = _common(body, COMPLETION_PARAMS)
    sampling = common.pop("inputs")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad_input(f"prompt: got {describe_value(prompt)}; allowed: a string, or a list of one string "
                        "(token-id prompts and batches are not supported)", "prompt")
    return OpenAIRequest(inputs={"prompt": prompt, "raw": True, **sampling}, **common)


def _common(body, known: set[str]) -> dict:
    """The parameters both endpoints share, checked; -> OpenAIRequest's fields but the prompt."""
    if not isinstance(body, dict):
        raise bad_input(f"body: got {describe_value(body)}; allowed: a JSON object")
    for key, value in body.items():
        if key not in known:
            raise bad_input(f"Unrecognized request argument supplied: {key}", str(key))
        if key in NEUTRAL and value is not None and not NEUTRAL[key][0](value):
            raise bad_input(f"{key}: got {describe_value(value)}; not supported by this server "
                            f"(allowed: {NEUTRAL[key][1]}, or null)", key)
    given = {k: v for k, v in body.items() if v is not None}
    model = given.get("model")
    if not isinstance(model, str) or not model:
        raise bad_input(f"model: got {describe_value(model)}; allowed: a model name (see GET /v1/models)", "model")
    stream = _flag(given, "stream")
    options = given.get("stream_options", {})
    if "stream_options" in given and not stream:
        raise bad_input("stream_options: only allowed when stream is true", "stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise bad_input(f"stream_options: got {describe_value(options)}; allowed: {{\"include_usage\": bool}}",
                        "stream_options")
    return {"model": model, "stream": stream, "include_usage": _flag(options, "include_usage", "stream_options."),
            "stop": _stops(given.get("stop")), "inputs": _sampling(given)}


def _sampling(given: dict) -> dict:
    """The sampling parameters as Workers AI inputs (see the table above)."""
    inputs = {}
    try:
        for name, (low, high) in RANGES.items():
            if name in given:
                inputs[name] = check_number(name, given[name], low, high, False)
        for name in ("frequency_penalty", "presence_penalty"):
            if inputs.get(name, 0) < 0:
                raise InputError(f"{name}: got {inputs[name]}; allowed here: a number in 0..2 (OpenAI's negative "
                                 "values, which favour repetition, are not supported)")
        if "seed" in given:
            inputs["seed"] = FIELDS["seed"].check(given["seed"])
        for name in ("top_k", "repetition_penalty"):
            if name in given:
                inputs[name] = FIELDS[name].check(given[name])
        limits = {name: FIELDS["max_tokens"].check(given[name]) for name in ("max_tokens", "max_completion_tokens")
                  if name in given}
    except InputError as e:
        raise bad_input(str(e), str(e).split(":", 1)[0]) from None
    if len(set(limits.values())) > 1:
        raise bad_input(f"max_tokens ({limits['max_tokens']}) and max_completion_tokens "
                        f"({limits['max_completion_tokens']}) disagree; give one of them", "max_completion_tokens")
    if limits:
        inputs["max_tokens"] = next(iter(limits.values()))
    return inputs


def _flag(values: dict, name: str, prefix: str = "") -> bool:
    value = values.get(name, False)
    if not isinstance(value, bool):
        raise bad_input(f"{prefix}{name}: got {describe_value(value)}; allowed: true or false", prefix + name)
    return value


def _stops(value) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value if value is not None else []
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise bad_input(f"stop: got {describe_value(value)}; allowed: a non-empty string or a list of up to "
                        f"{MAX_STOPS} of them", "stop")
    return tuple(stops)


MESSAGE_KEYS = {"assistant": ("tool_calls",), "tool": ("tool_call_id",)}  # beyond role and content


def _messages(value) -> list[dict]:
    """OpenAI chat messages -> Workers AI's (whose own checks follow in parse_inputs): {role, content},
    an assistant turn's ``tool_calls`` (content may then be null) and a tool turn's ``tool_call_id``."""
    if not isinstance(value, list) or not value:
        raise bad_input(f"messages: got {describe_value(value)}; allowed: a non-empty array of messages", "messages")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_input(f"{where}: got {describe_value(message)}; allowed: an object with role and content", where)
        role = "system" if message.get("role") == "developer" else message.get("role")
        extra = MESSAGE_KEYS.get(role, ()) if isinstance(role, str) else ()
        for key, item in message.items():
            if key not in ("role", "content", *extra) and item is not None:
                allowed = " and ".join(("role", "content", *extra))
                raise bad_input(f"{where}.{key}: got {describe_value(item)}; not supported (allowed: {allowed})",
                                f"{where}.{key}")
        converted = {"role": role, **{key: message[key] for key in extra if message.get(key) is not None}}
        if message.get("content") is not None or "tool_calls" not in converted:
            converted["content"] = _content(message.get("content"), where)
        out.append(converted)
    return out


def _content(content, where: str):
    """A message's content: a string, or OpenAI's text parts joined with newlines."""
    if not isinstance(content, list):
        return content  # a string, or a wrong type the schema check names
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str) or set(part) != {"type", "text"}:
            raise bad_input(f"{where}.content[{j}]: got {describe_value(part)}; allowed: "
                            '{"type": "text", "text": str} (this model reads text only)', f"{where}.content[{j}]")
        texts.append(part["text"])
    return "\n".join(texts)
