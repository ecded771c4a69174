"""Tools and functions (text/tools.py, text/tool_stream.py): every call a model makes is valid.

Tiny random models cannot call tools on purpose, so any valid call they make is the grammar's
doing: each returned call names one of the given tools and its arguments validate with
``jsonschema`` against that tool's parameters, for both input shapes and for ``functions``;
``tool_choice`` "required" and a name always give a call, "none" never does. Tool results
render in the generic format (also through Llama-2's strict template) or through a template
that takes tools, as transformers renders it.
"""

import json
import shutil

import jsonschema
import pytest

import awqinfer
from awqinfer import InputError
from awqinfer.cli.main import main as cli_main
from awqinfer.engine.text.constraints import Grammars
from awqinfer.engine.text.inputs import parse_inputs
from awqinfer.engine.text.tokenizer import Tokenizer
from awqinfer.engine.text.tool_stream import ToolCallReader, read_tool_calls
from awqinfer.engine.text.tools import ToolChoice, call_text, parse_tools, tools_grammar
from checkpoints import make_model, set_chat_template

WEATHER = {"name": "get_weather", "description": "The weather in a city now",
           "parameters": {"type": "object", "required": ["city"],
                          "properties": {"city": {"type": "string", "maxLength": 12, "description": "the city"},
                                         "unit": {"type": "string", "enum": ["C", "F"], "description": "unit"}}}}
ADD = {"name": "add", "description": "Add two integers",
       "parameters": {"type": "object", "required": ["a", "b"],
                      "properties": {"a": {"type": "integer", "minimum": -99, "maximum": 99, "description": "x"},
                                     "b": {"type": "integer", "minimum": -99, "maximum": 99, "description": "y"}}}}
FLAT = [WEATHER, ADD]
OPENAI = [{"type": "function", "function": t} for t in FLAT]
SCHEMAS = {t["name"]: t["parameters"] for t in FLAT}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def long_qwen2(tmp_path_factory):
    """tiny_qwen2 with room for the tools preamble: a tiny vocabulary spells it in ~1000 tokens."""
    return make_model(tmp_path_factory.mktemp("qwen2_long"), "qwen2", max_positions=4096)


@pytest.fixture(scope="module")
def long_llama(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("llama_long"), "llama", max_positions=4096)


@pytest.fixture(scope="module", params=["long_qwen2", "long_llama"])
def tiny(request):
    return awqinfer.load(request.getfixturevalue(request.param))


def check_calls(out, schemas):
    """Every call names a given tool and its arguments validate against that tool's schema."""
    for call in out.get("tool_calls", []):
        assert set(call) == {"name", "arguments"} and call["name"] in schemas
        jsonschema.validate(call["arguments"], schemas[call["name"]])


@pytest.mark.parametrize("shape", ["flat", "openai"])
def test_required_and_named_always_call_a_valid_tool(tiny, shape):
    tools = FLAT if shape == "flat" else OPENAI
    for seed in range(1, 7):
        inputs = {"messages": ASK, "tools": tools, "seed": seed, "temperature": 1.0, "max_tokens": 120}
        out = tiny.run(inputs, tool_choice="required", parallel_tool_calls=False)
        assert out["finish_reason"] == "tool_calls" and len(out["tool_calls"]) == 1 and out["response"] == ""
        check_calls(out, SCHEMAS)
        named = tiny.run(inputs, tool_choice={"type": "function", "function": {"name": "add"}})
        assert named["tool_calls"] and {c["name"] for c in named["tool_calls"]} == {"add"}
        check_calls(named, SCHEMAS)


def test_parallel_calls_and_auto_are_valid_and_none_never_calls(tiny):
    for seed in range(1, 5):
        inputs = {"messages": ASK, "tools": FLAT, "seed": seed, "temperature": 1.2, "max_tokens": 100}
        parallel = tiny.run(inputs, tool_choice="required")
        assert parallel["tool_calls"] and parallel["finish_reason"] in ("tool_calls", "length")
        check_calls(parallel, SCHEMAS)
        auto = tiny.run(inputs)  # Workers AI's run: the model chooses
        check_calls(auto, SCHEMAS)
        assert (auto["finish_reason"] == "tool_calls") == bool(auto.get("tool_calls")) or \
            auto["finish_reason"] == "length"
        none = tiny.run(inputs, tool_choice="none")
        assert "tool_calls" not in none and none == tiny.run({**inputs, "tools": []})  # as if there were no tools


def test_functions_are_tools_taking_any_object(tiny):
    functions = [{"name": "lookup", "code": "def lookup(q):\n    return DB[q]"}]
    request = parse_inputs({"messages": ASK, "functions": functions})
    prompt = tiny.tokenizer.decode(tiny.prompt_ids(request), skip_special_tokens=False)
    assert '"name": "lookup"' in prompt and "return DB[q]" in prompt
    for seed in range(1, 5):
        out = tiny.run({"messages": ASK, "functions": functions, "seed": seed, "max_tokens": 60},
                       tool_choice="required", parallel_tool_calls=False)
        if out["finish_reason"] == "length":  # random keys and strings may run past max_tokens: a call begun
            assert out["response"].startswith(call_text("lookup", {})[:-len("{}}\n</tool_call>")] + "{")
            continue
        assert out["finish_reason"] == "tool_calls" and [c["name"] for c in out["tool_calls"]] == ["lookup"]
        assert isinstance(out["tool_calls"][0]["arguments"], dict)


def test_a_function_takes_any_object(grammars):
    single = tools_grammar(parse_tools(None, [{"name": "lookup", "code": "pass"}]), ToolChoice("required"), False,
                           grammars)
    for arguments in ({}, {"q": "x"}, {"a": [1, {"b": None}], "c": -2.5e3, "d": True}):
        assert accepts(grammars, single, call_text("lookup", arguments)) == (True, True)
    assert accepts(grammars, single, call_text("lookup", {})[:-len("{}}\n</tool_call>")] + "[1]}")[0] is False


def test_streamed_calls_arrive_in_pieces_that_join_to_the_result(tiny):
    inputs = {"messages": ASK, "tools": FLAT, "seed": 3, "temperature": 1.0, "max_tokens": 150}
    result = tiny.run(inputs, tool_choice="required")
    chunks = list(tiny.run({**inputs, "stream": True}, tool_choice="required"))
    assert chunks[-1]["tool_calls"] == result["tool_calls"] and chunks[-1]["usage"] == result["usage"]
    names, arguments = {}, {}
    for chunk in chunks:
        delta = chunk.get("tool_call_delta")
        if delta is None:
            continue
        if "name" in delta:
            assert delta["index"] == len(names) and delta["index"] not in arguments  # the name comes first
            names[delta["index"]] = delta["name"]
        else:
            arguments[delta["index"]] = arguments.get(delta["index"], "") + delta["arguments"]
    complete = [{"name": names[i], "arguments": json.loads(arguments[i])} for i in range(len(result["tool_calls"]))]
    assert complete == result["tool_calls"]


@pytest.fixture(scope="module")
def grammars(long_qwen2):
    tokenizer = Tokenizer(long_qwen2)
    return Grammars(tokenizer, 512, tokenizer.eos_token_ids)


def accepts(grammars, grammar, text):
    """Whether the mask lets ``text`` through token by token, and whether the grammar is then complete."""
    constraint = grammars.constraint(grammar, "tools")
    ids = grammars.ll_tokenizer.tokenize_str(text)
    for n, token in enumerate(ids, start=1):
        if not constraint.allowed()[token]:
            return False, False
        if constraint.advance(token):  # complete: nothing may follow
            return n == len(ids), n == len(ids)
    return True, bool(constraint.allowed()[sorted(grammars.stop_ids)].any())


def test_the_grammar_lets_through_exactly_the_valid_calls(grammars):
    tools = parse_tools(FLAT, None)
    auto = tools_grammar(tools, ToolChoice(), True, grammars)
    weather = call_text("get_weather", {"city": "Paris", "unit": "C"})
    assert accepts(grammars, auto, "Let me check. " + weather) == (True, True)
    assert accepts(grammars, auto, weather + "\n" + call_text("add", {"a": 1, "b": -2})) == (True, True)
    assert accepts(grammars, auto, "Just text, no call.") == (True, True)
    assert accepts(grammars, auto, "Hi <tool_call>\n{\"name\": \"get_time\"")[0] is False  # not a tool
    assert accepts(grammars, auto, call_text("add", {"a": 1, "b": 200}))[0] is False  # out of bounds
    assert accepts(grammars, auto, call_text("add", {"a": 1}))[0] is False  # "b" is required
    assert accepts(grammars, auto, call_text("add", {"a": 1, "b": 2, "c": 3}))[0] is False  # closed objects
    assert accepts(grammars, auto, weather + " and more text")[0] is False  # nothing after the calls
    single = tools_grammar(tools, ToolChoice("required"), False, grammars)
    assert accepts(grammars, single, weather) == (True, True)
    assert accepts(grammars, single, "Sure. " + weather)[0] is False  # a call, at once
    assert accepts(grammars, single, weather + "\n<tool_call>")[0] is False  # one call only
    named = tools_grammar(tools, ToolChoice("required", "add"), True, grammars)
    assert accepts(grammars, named, weather)[0] is False


def test_the_reader_splits_text_and_calls_however_the_text_is_cut():
    calls = [{"name": "get_weather", "arguments": {"city": "Zoë}\n</tool_call>"}}, {"name": "add", "arguments": {}}]
    text = "Sure, <tool_ <b>\n" + call_text(**calls[0]) + "\n" + call_text(**calls[1])
    for size in (1, 2, 5, len(text)):
        pieces = [{"response": text[i:i + size]} for i in range(0, len(text), size)]
        pieces[-1] = {**pieces[-1], "usage": {}, "finish_reason": "stop"}
        chunks = list(read_tool_calls(iter(pieces)))
        assert "".join(c["response"] for c in chunks) == "Sure, <tool_ <b>\n"
        assert chunks[-1]["tool_calls"] == calls and chunks[-1]["finish_reason"] == "tool_calls"
    reader = ToolCallReader()  # a call cut short stays text
    list(reader.feed("Hi " + call_text(**calls[1])[:-3]))
    assert reader.calls == [] and reader.leftover() == call_text(**calls[1])[:-3]


LLAMA2_TURNS = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                {"role": "tool", "content": "{\"temp\": 21}", "tool_call_id": "call_1"},
                {"role": "tool", "content": "{\"wind\": 3}", "name": "get_weather"}]


def test_tool_results_render_in_the_generic_format_and_generate(tiny):
    """Calls and results become text turns, so even Llama-2's user/assistant-only template takes them."""
    inputs = {"messages": LLAMA2_TURNS, "tools": FLAT, "max_tokens": 8, "seed": 1}
    prompt = tiny.tokenizer.decode(tiny.prompt_ids(parse_inputs(inputs)), skip_special_tokens=False)
    assert call_text("get_weather", {"city": "Paris"}) in prompt
    assert "<tool_response>\n{\"temp\": 21}\n</tool_response>\n<tool_response>\n{\"wind\": 3}\n</tool_response>" \
        in prompt and prompt.count("# Tools") == 1
    out = tiny.run(inputs)
    assert out["usage"]["completion_tokens"] >= 1
    workers_shape = [LLAMA2_TURNS[0], {"role": "assistant", "tool_calls": [
        {"name": "get_weather", "arguments": {"city": "Paris"}}]}, *LLAMA2_TURNS[2:]]
    assert tiny.prompt_ids(parse_inputs({**inputs, "messages": workers_shape})) == \
        tiny.prompt_ids(parse_inputs(inputs))


HERMES_TEMPLATE = (  # after Qwen2.5-Instruct's template: tools, tool calls and tool turns
    "{%- if tools %}{{- '<|im_start|>system\\n# Tools\\n\\n<tools>' }}{%- for tool in tools %}{{- '\\n' }}"
    "{{- tool | tojson }}{%- endfor %}{{- '\\n</tools>\\nCall as <tool_call>{...}</tool_call><|im_end|>\\n' }}"
    "{%- endif %}{%- for message in messages %}"
    "{%- if message.role == 'assistant' and message.tool_calls %}{{- '<|im_start|>assistant' }}"
    "{%- for tool_call in message.tool_calls %}{%- if tool_call.function is defined %}"
    "{%- set tool_call = tool_call.function %}{%- endif %}{{- '\\n<tool_call>\\n{\"name\": \"' }}"
    "{{- tool_call.name }}{{- '\", \"arguments\": ' }}{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}{{- '<|im_start|>user\\n<tool_response>\\n' + message.content }}"
    "{{- '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def test_a_template_that_takes_tools_renders_them_as_transformers_does(long_qwen2, tmp_path):
    transformers = pytest.importorskip("transformers")
    directory = shutil.copytree(long_qwen2, tmp_path / "hermes")
    set_chat_template(directory, HERMES_TEMPLATE)
    llm = awqinfer.load(directory)
    inputs = {"messages": LLAMA2_TURNS[:3], "tools": FLAT, "max_tokens": 150, "seed": 2}
    config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("tokenizer_class")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"), **config)
    hf_messages = [LLAMA2_TURNS[0], {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}, LLAMA2_TURNS[2]]
    expected = hf.apply_chat_template(hf_messages, tools=OPENAI, tokenize=False, add_generation_prompt=True)
    prompt = llm.tokenizer.decode(llm.prompt_ids(parse_inputs(inputs)), skip_special_tokens=False)
    assert prompt == expected and "Results come back" not in prompt  # the template's words, not the preamble
    out = llm.run(inputs, tool_choice="required", parallel_tool_calls=False)
    assert out["finish_reason"] == "tool_calls" and len(out["tool_calls"]) == 1
    check_calls(out, SCHEMAS)


@pytest.mark.parametrize("inputs,kwargs,match", [
    ({"tools": [{"name": "bad name"}]}, {}, r"^tools\[0\]\.name: got 'bad name'.*letters, digits"),
    ({"tools": [WEATHER, WEATHER]}, {}, r"^tools: the name 'get_weather' is given twice"),
    ({"tools": [{"name": "f", "parameters": {"type": "array"}}]}, {}, r"^tools\[0\]\.parameters: .*'type': 'object'"),
    ({"tools": [{"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "int"}}}}]}, {},
     r"^tools: the parameters of 'f': Invalid type: int"),
    ({"tools": [{"type": "function", "function": {"name": "f", "colour": 1}}]}, {}, r"^tools\[0\]\.function: got"),
    ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, {}, r"^tools\[0\]: got .*'type': 'function'"),
    ({"tools": {"name": "f"}}, {}, r"^tools: got \{'name': 'f'\} \(dict\); allowed: an array"),
    ({"tools": [{"name": f"f{i}"} for i in range(129)]}, {}, r"^tools: got 129 tools.*at most 128"),
    ({"functions": [{"name": "f"}]}, {}, r"^functions\[0\]: got .*exactly 'name' and 'code'"),
    ({"tools": FLAT}, {"tool_choice": "always"}, r"^tool_choice: got 'always'"),
    ({"tools": FLAT}, {"tool_choice": {"type": "function", "function": {"name": "nope"}}},
     r"^tool_choice: names 'nope'.*not among the tools"),
    ({}, {"tool_choice": "required"}, r"^tool_choice: got 'required' \(str\) without tools"),
    ({"tools": FLAT}, {"parallel_tool_calls": "yes"}, r"^parallel_tool_calls: got 'yes'"),
    ({"tools": FLAT, "response_format": {"type": "json_object"}}, {}, r"^response_format: JSON mode cannot be"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"name": "f", "arguments": "{oops"}]}]}, {},
     r"^messages\[0\]\.tool_calls\[0\]\.arguments: got '\{oops'"),
    ({"messages": [{"role": "user", "tool_calls": []}]}, {}, r"^messages\[0\]: got .*exactly 'role' and 'content'"),
])
def test_bad_tools_are_input_errors_before_any_chunk(long_qwen2, inputs, kwargs, match):
    llm = awqinfer.load(long_qwen2)
    with pytest.raises(InputError, match=match):
        llm.run({"messages": ASK, "stream": True, **inputs}, **kwargs)


def test_tools_need_the_messages_form():
    with pytest.raises(InputError, match=r"^tools: only with 'messages'"):
        parse_inputs({"prompt": "hi", "tools": FLAT})


def test_cli_prints_calls_and_json(long_qwen2, tmp_path, capsys):
    tools, schema = tmp_path / "tools.json", tmp_path / "schema.json"
    tools.write_text(json.dumps(OPENAI))
    schema.write_text(json.dumps(ADD["parameters"]))
    base = ["run", "--model", str(long_qwen2), "--seed", "4", "--max-tokens", "200"]
    assert cli_main([*base, "--tools", str(tools), "--tool-choice", "add", "Add 2 and 3"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]  # text may come too
    assert lines and all(json.loads(line)["name"] == "add" for line in lines)
    for line in lines:
        jsonschema.validate(json.loads(line)["arguments"], ADD["parameters"])
    assert cli_main([*base, "--json-schema", str(schema), "Two numbers"]) == 0
    jsonschema.validate(json.loads(capsys.readouterr().out), ADD["parameters"])
    assert cli_main([*base, "--json-schema", str(schema), "--json", "Two numbers"]) == 0
    jsonschema.validate(json.loads(capsys.readouterr().out)["response"], ADD["parameters"])  # parsed, as run gives
    assert cli_main([*base, "--json-object", "--json", "An object"]) == 0
    assert json.loads(capsys.readouterr().out)["finish_reason"] in ("stop", "length")
    schema.write_text("{not json")
    assert cli_main([*base, "--json-schema", str(schema), "x"]) == 2
    assert f"--json-schema {schema}: not valid JSON" in capsys.readouterr().err
    assert cli_main([*base, "--tool-choice", "add", "x"]) == 2
    assert "--tool-choice needs tools" in capsys.readouterr().err


def test_default_model_calls_a_tool(default_model):
    llm = awqinfer.load(default_model)
    out = llm.run({"messages": [{"role": "user", "content": "What is the weather in Rome?"}], "tools": OPENAI,
                   "seed": 1, "max_tokens": 60}, tool_choice="required", parallel_tool_calls=False)
    assert out["finish_reason"] == "tool_calls" and len(out["tool_calls"]) == 1
    check_calls(out, SCHEMAS)


def test_fitting_a_conversation_counts_the_tools(long_qwen2):
    """llm.fit_messages with tools counts the prompt as run will render it: preamble and calls included."""
    llm = awqinfer.load(long_qwen2)
    turns = [{"role": "user", "content": "Weather in Rome?"},
             {"role": "assistant", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Rome"}}]},
             {"role": "tool", "content": "{\"temp\": 20}"}, {"role": "user", "content": "And in Paris?"}]
    room = 4096 - len(llm.prompt_ids(parse_inputs({"messages": turns})))
    assert llm.fit_messages(turns, room) == (list(parse_inputs({"messages": turns}).messages), 0)
    kept, dropped = llm.fit_messages(turns, room, tools=FLAT)
    assert (kept, dropped) == ([turns[-1]], 3)
