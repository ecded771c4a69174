"""Tools and functions: what the model is told about them, and the grammar that makes its calls valid.

None of the seed models has a native tool-call format, so awqinfer writes one format for
them, the one Hermes-style templates (Qwen2.5, Hermes, SmolLM3) use natively:

    a system preamble listing the tools as JSON Schema between <tools></tools>
    the model's output:  [text]  <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>  (\\n<tool_call>...)*
    tool results:        a user turn of <tool_response>\\n...\\n</tool_response> blocks

A checkpoint whose chat template takes ``tools`` and writes ``<tool_call>`` gets the tools,
assistant tool calls and ``role: "tool"`` turns through its own template instead (the same
output format); any other template gets the preamble. The grammar (constraints.py) lets the
model either answer in text or call tools, and any call it makes names one of the tools and
has arguments valid under that tool's ``parameters``. ``tool_choice`` "required" or a name
makes the output start with a call; "none" leaves the tools out of the prompt and the grammar.

Tools come in the seed schema's two shapes, flat ``{name, description, parameters}`` and
OpenAI's ``{type: "function", function: {...}}``; ``functions`` entries (``{name, code}``) are
offered as tools taking any object, their code shown to the model and never executed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ...errors import InputError
from .constraints import Grammars, check_json, with_json_options
from .schema import MAX_CHARS, describe_value

TRIGGER, CALL_END = "<tool_call>", "</tool_call>"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # OpenAI's function names, plus '.' and ':'
MAX_TOOLS = 128  # OpenAI's limit
CHOICES = ("auto", "none", "required")
PREAMBLE = """# Tools

You may call one or more functions to assist with the user query. Their signatures, as JSON Schema, are \
between <tools></tools>:
<tools>
{tools}
</tools>

To call a function, write a JSON object with its name and arguments between <tool_call></tool_call> tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>
Results come back between <tool_response></tool_response> tags. If no function fits, answer in plain text."""


@dataclass(frozen=True)
class Tool:
    """One callable tool: its name, what it does, and the JSON Schema of its arguments (an object)."""

    name: str
    description: str
    parameters: dict

    def as_openai(self) -> dict:
        """The tool as chat templates (and OpenAI) describe one."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


@dataclass(frozen=True)
class ToolChoice:
    """How the model may use the tools: mode "auto", "none" or "required", or one named tool."""

    mode: str = "auto"
    name: str | None = None  # with mode "required": only this tool


def parse_tools(tools, functions) -> tuple[Tool, ...]:
    """The ``tools`` and ``functions`` fields (either may be None) as Tools; InputError on the first problem."""
    out = []
    if tools is not None:
        for i, tool in enumerate(_array("tools", tools)):
            out.append(_tool(f"tools[{i}]", tool))
    if functions is not None:
        for i, fn in enumerate(_array("functions", functions)):
            where = f"functions[{i}]"
            if not isinstance(fn, dict) or set(fn) != {"name", "code"}:
                raise InputError(f"{where}: got {describe_value(fn)}; "
                                 "allowed: an object with exactly 'name' and 'code'")
            code = _string(f"{where}.code", fn["code"], MAX_CHARS)
            out.append(Tool(_name(f"{where}.name", fn["name"]), f"Defined by this code (not run):\n{code}",
                            {"type": "object"}))
    names = [t.name for t in out]
    if len(out) > MAX_TOOLS:
        raise InputError(f"tools: got {len(out)} tools and functions; allowed: at most {MAX_TOOLS}")
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise InputError(f"tools: the name {duplicate!r} is given twice; allowed: distinct names")
    return tuple(out)


def parse_tool_choice(choice, tools: tuple[Tool, ...]) -> ToolChoice:
    """OpenAI's ``tool_choice``: "auto", "none", "required" or {"type": "function", "function": {"name"}}."""
    if choice is None:
        return ToolChoice()
    if isinstance(choice, str) and choice in CHOICES:
        picked = ToolChoice(choice)
    elif (isinstance(choice, dict) and choice.get("type") == "function" and set(choice) == {"type", "function"}
          and isinstance(choice["function"], dict) and set(choice["function"]) == {"name"}):
        picked = ToolChoice("required", choice["function"]["name"])
        if picked.name not in [t.name for t in tools]:
            raise InputError(f"tool_choice: names {describe_value(picked.name)}, which is not among the tools")
    else:
        raise InputError(f"tool_choice: got {describe_value(choice)}; allowed: 'auto', 'none', 'required' or "
                         "{'type': 'function', 'function': {'name': ...}}")
    if picked.mode == "required" and not tools:
        raise InputError(f"tool_choice: got {describe_value(choice)} without tools; allowed: 'none' or 'auto'")
    return picked


def tools_grammar(tools: tuple[Tool, ...], choice: ToolChoice, parallel: bool, grammars: Grammars) -> str:
    """The Lark grammar of the output: text or tool calls ("auto"), or calls only ("required").

    Each tool's parameters are checked alone first, so a schema llguidance cannot take is an
    InputError naming that tool. ``parallel`` False allows one call at most. Arguments are
    ``closed``: only the declared properties, where a tool declares them.
    """
    try:
        offered = [(t.name, closed(t.parameters)) for t in tools if choice.name in (None, t.name)]
    except RecursionError:
        raise InputError("tools: a tool's parameters are nested too deeply") from None
    for name, schema in offered:
        grammars.check(grammars.json_schema(schema), f"tools: the parameters of {name!r}")
    rules = [f"tool_{i}: {_literal(_call_head(name))} %json {json.dumps(with_json_options(schema))} {_literal('}')}"
             for i, (name, schema) in enumerate(offered)]
    calls = f"body{' more*' if parallel else ''}"
    start = f"TEXT | trigger {calls}" if choice.mode == "auto" else f"{_literal(TRIGGER)} {calls}"
    return "\n".join([
        "%llguidance {}",
        f"start: {start}",
        f"trigger[lazy]: TEXT {_literal(TRIGGER)}",
        f"more: {_literal(chr(10) + TRIGGER)} body",
        f"body: {_literal(chr(10))} ({' | '.join(f'tool_{i}' for i in range(len(offered)))}) "
        f"{_literal(chr(10) + CALL_END)}",
        *rules,
        r"TEXT: /(.|\n)*/",
    ])


def call_text(name: str, arguments: dict) -> str:
    """One call as the model writes it (and as earlier calls are shown back to it)."""
    return f"{TRIGGER}\n{_call_head(name)}{json.dumps(arguments, ensure_ascii=False)}}}\n{CALL_END}"


def takes_tools(template_source: str) -> bool:
    """Whether a chat template renders ``tools`` itself in the format of this module (Hermes style)."""
    return re.search(r"\btools\b", template_source) is not None and TRIGGER in template_source


def prompt_messages(messages, tools: tuple[Tool, ...], native: bool) -> tuple[list[dict], list[dict] | None]:
    """The messages and ``tools`` argument for the chat template.

    ``native``: the template takes tools; messages keep their tool calls and tool turns as HF
    templates expect them. Otherwise tools become a system preamble, calls become text and
    consecutive tool results one user turn of <tool_response> blocks.
    """
    if native:
        out = [_native_message(m) for m in messages]
        return out, ([t.as_openai() for t in tools] or None)
    out: list[dict] = []
    for i, m in enumerate(messages):
        if m["role"] == "tool":
            block = f"<tool_response>\n{m['content']}\n</tool_response>"
            if i > 0 and messages[i - 1]["role"] == "tool":  # one turn for consecutive results
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block})
        elif m.get("tool_calls"):
            calls = "\n".join(call_text(c["name"], c["arguments"]) for c in m["tool_calls"])
            out.append({"role": m["role"], "content": f"{m['content']}\n{calls}" if m["content"] else calls})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    if tools:
        preamble = PREAMBLE.format(tools="\n".join(json.dumps(t.as_openai(), ensure_ascii=False) for t in tools))
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{preamble}"
        else:
            out.insert(0, {"role": "system", "content": preamble})
    return out, None


def _native_message(m: dict) -> dict:
    """A message as HF chat templates take it: tool calls as {type, function: {name, arguments}}."""
    out = dict(m)
    if m.get("tool_calls"):
        out["tool_calls"] = [{"type": "function", "function": dict(c)} for c in m["tool_calls"]]
    return out


def _call_head(name: str) -> str:
    return f'{{"name": {json.dumps(name)}, "arguments": '


def _literal(text: str) -> str:
    """A Lark string literal (JSON's quoting is Lark's)."""
    return json.dumps(text)


def _array(field: str, value) -> list:
    if not isinstance(value, list):
        raise InputError(f"{field}: got {describe_value(value)}; allowed: an array")
    return value


def _string(field: str, value, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        shown = f"a string of {len(value)} characters" if isinstance(value, str) else describe_value(value)
        raise InputError(f"{field}: got {shown}; allowed: a string of at most {limit} characters")
    return value


def _name(field: str, value) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise InputError(f"{field}: got {describe_value(value)}; allowed: 1 to 64 letters, digits, '_', '-', '.', ':'")
    return value


def _tool(where: str, tool) -> Tool:
    """One tool in either shape: flat {name, description, parameters} or {type: "function", function}."""
    if isinstance(tool, dict) and "function" in tool:
        if set(tool) != {"type", "function"} or tool["type"] != "function":
            raise InputError(f"{where}: got {describe_value(tool)}; allowed: {{'type': 'function', 'function': ...}}")
        where, tool = f"{where}.function", tool["function"]
    allowed = {"name", "description", "parameters", "strict"}
    if not isinstance(tool, dict) or "name" not in tool or not set(tool) <= allowed:
        raise InputError(f"{where}: got {describe_value(tool)}; allowed: an object with 'name' and optionally "
                         "'description', 'parameters' (a JSON Schema object), 'strict'")
    if "strict" in tool and not isinstance(tool["strict"], bool):
        raise InputError(f"{where}.strict: got {describe_value(tool['strict'])}; allowed: true or false "
                         "(calls always follow the schema)")
    parameters = tool.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise InputError(f"{where}.parameters: got {describe_value(parameters)}; "
                         "allowed: a JSON Schema of an object ('type': 'object')")
    parameters = json.loads(check_json(parameters, f"{where}.parameters"))  # a private copy of plain JSON
    return Tool(_name(f"{where}.name", tool["name"]), _string(f"{where}.description", tool.get("description", ""),
                                                              MAX_CHARS), {"type": "object", **parameters})


def closed(schema):
    """``schema`` with ``additionalProperties: false`` on every object that lists its properties and
    does not say otherwise, as OpenAI's strict mode has it: a call carries the declared arguments
    only (still valid under the schema as given). Applied to the grammar, not to what the model reads."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "$defs", "definitions", "patternProperties"):
            out[key] = {k: closed(v) for k, v in value.items()} if isinstance(value, dict) else value
        elif key in ("items", "prefixItems", "additionalProperties", "anyOf", "oneOf", "allOf"):
            out[key] = closed(value)
        else:
            out[key] = value
    if "properties" in out and "additionalProperties" not in out and "patternProperties" not in out:
        out["additionalProperties"] = False
    return out
