"""The engine's per-request features over Workers AI's route of ``awqinfer serve``: a LoRA adapter
(``--lora-dir`` + the ``lora`` field), JSON mode (``response_format``) and tool calls (``tools``),
each answering what ``LLM.run`` answers in process, through a real server and real HTTP.
"""

from __future__ import annotations

import jsonschema
import pytest
import requests

import awqinfer
from checkpoints import make_model
from serving import Server, sse_events
from test_lora import make_adapter

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                           "year": {"type": "integer", "minimum": 0, "maximum": 3000}},
          "required": ["city", "year"], "additionalProperties": False}
TOOLS = [{"name": "get_weather", "description": "The weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}},
                         "required": ["city"]}}]


@pytest.fixture(scope="module")
def cwd(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    model = make_model(root / "qwen2", "qwen2", max_positions=4096)  # room for a tools preamble
    make_adapter(model, root / "adapters" / "style", seed=5)
    return root


@pytest.fixture(scope="module")
def server(cwd):
    with Server("--model", "qwen2", "--lora-dir", "adapters", "--no-access-log", cwd=cwd) as s:
        yield s


@pytest.fixture(scope="module")
def local(cwd):
    return awqinfer.load(cwd / "qwen2", lora_dir=cwd / "adapters")


def post(server, body: dict) -> requests.Response:
    return requests.post(f"{server.url}/ai/run/qwen2", json=body, timeout=120)


def test_a_lora_request_answers_as_in_process(server, local):
    body = {"prompt": "Hello there", "max_tokens": 12, "temperature": 0}
    with_adapter = post(server, {**body, "lora": "style"}).json()["result"]
    assert with_adapter["response"] == local.run({**body, "lora": "style"})["response"]
    assert with_adapter["response"] != post(server, body).json()["result"]["response"]  # the adapter changes it
    unknown = post(server, {**body, "lora": "nope"})
    assert unknown.status_code == 400
    error = unknown.json()["errors"][0]
    assert error["code"] == 5006 and "nope" in error["message"] and "style" in error["message"]


def test_json_mode_answers_a_parsed_object(server, local):
    body = {"messages": [{"role": "user", "content": "A city and a year"}], "max_tokens": 200, "seed": 7,
            "response_format": {"type": "json_schema", "json_schema": SCHEMA}}
    result = post(server, body).json()["result"]
    jsonschema.validate(result["response"], SCHEMA)
    assert result["response"] == local.run(body)["response"]
    bad = post(server, {**body, "response_format": {"type": "json_schema", "json_schema": "nope"}})
    assert bad.status_code == 400 and "response_format" in bad.json()["errors"][0]["message"]


def test_tools_answer_as_in_process_streamed_and_whole(server, local):
    body = {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": TOOLS, "max_tokens": 120,
            "seed": 3}
    whole = post(server, body).json()["result"]
    assert whole == local.run(body)  # the same seed: the same text and the same calls
    with requests.post(f"{server.url}/ai/run/qwen2", json={**body, "stream": True}, stream=True, timeout=120) as r:
        events = sse_events(r)
    events = [e for e in events if isinstance(e, dict)]
    assert "".join(e["response"] for e in events) == whole["response"]
    assert events[-1].get("tool_calls", []) == whole.get("tool_calls", [])


def test_an_adapter_is_a_model_to_openai_clients(server, local):
    """As vLLM serves them: /v1/models lists the adapters, and an adapter's name as ``model`` is the base
    model with that adapter (the same text as Workers AI's ``lora`` field)."""
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    assert "style" in [m.id for m in client.models.list().data]
    messages = [{"role": "user", "content": "Hello there"}]
    reply = client.chat.completions.create(model="style", messages=messages, max_tokens=12, temperature=0)
    assert reply.model == "style"
    assert reply.choices[0].message.content == local.run({"messages": messages, "max_tokens": 12, "temperature": 0,
                                                          "lora": "style"})["response"]


def test_json_mode_through_the_openai_client(server, local):
    """OpenAI's response_format json_schema ({name, schema}) is Workers AI's JSON mode: the content is the
    JSON text of the same object, streamed and not."""
    import json

    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    messages = [{"role": "user", "content": "A city and a year"}]
    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA, "strict": True}}
    reply = client.chat.completions.create(model="qwen2", messages=messages, max_tokens=200, seed=7,
                                           response_format=fmt)
    value = json.loads(reply.choices[0].message.content)
    jsonschema.validate(value, SCHEMA)
    assert value == local.run({"messages": messages, "max_tokens": 200, "seed": 7,
                               "response_format": {"type": "json_schema", "json_schema": SCHEMA}})["response"]
    streamed = client.chat.completions.create(model="qwen2", messages=messages, max_tokens=200, seed=7,
                                              response_format=fmt, stream=True)
    assert json.loads("".join(c.choices[0].delta.content or "" for c in streamed if c.choices)) == value


# --- tools on the OpenAI route ------------------------------------------------------------------

OPENAI_TOOLS = [{"type": "function", "function": tool} for tool in TOOLS + [
    {"name": "add", "description": "Add two numbers",
     "parameters": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                                     "b": {"type": "integer", "minimum": 0, "maximum": 99}},
                    "required": ["a", "b"]}}]]
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def _validate_calls(calls, names=("get_weather", "add")) -> list[tuple[str, dict]]:
    """Each call names a given tool, has a call_ id, and arguments valid under that tool's schema."""
    import json

    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in OPENAI_TOOLS}
    assert calls and len({c.id for c in calls}) == len(calls)
    out = []
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_") and call.function.name in names
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, schemas[call.function.name])
        out.append((call.function.name, arguments))
    return out


def test_tool_calls_through_the_openai_client_whole_and_streamed(server, local):
    """tool_choice "required": message.tool_calls with ids and JSON arguments, finish_reason "tool_calls";
    the same calls LLM.run makes for the same seed, and streamed, the client's own accumulation of the
    deltas gives them again."""
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    params = {"model": "qwen2", "messages": ASK, "tools": OPENAI_TOOLS, "tool_choice": "required",
              "max_tokens": 400, "seed": 2}  # this seed: two calls, one to each tool
    reply = client.chat.completions.create(**params)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = _validate_calls(choice.message.tool_calls)
    in_process = local.run({"messages": ASK, "tools": OPENAI_TOOLS, "max_tokens": 400, "seed": 2},
                           tool_choice="required")
    assert len(calls) == 2
    assert calls == [(c["name"], c["arguments"]) for c in in_process["tool_calls"]]
    assert choice.message.content == (in_process["response"] or None)
    with client.chat.completions.stream(**params) as stream:
        streamed = stream.get_final_completion().choices[0]
    assert streamed.finish_reason == "tool_calls" and _validate_calls(streamed.message.tool_calls) == calls
    deltas = [c.choices[0].delta for c in client.chat.completions.create(**params, stream=True) if c.choices]
    pieces = [call for d in deltas for call in d.tool_calls or []]
    firsts = [p for p in pieces if p.id is not None]  # one first piece per call: index, id, type, name
    assert [p.index for p in firsts] == list(range(len(calls)))
    assert all(p.type == "function" and p.function.name and p.function.arguments == "" for p in firsts)


def test_tool_choice_none_named_and_one_call_at_most(server):
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    base = {"model": "qwen2", "messages": ASK, "tools": OPENAI_TOOLS, "max_tokens": 150}
    for seed in (1, 2, 3):
        none = client.chat.completions.create(**base, seed=seed, tool_choice="none").choices[0]
        assert none.message.tool_calls is None and none.finish_reason in ("stop", "length")
        named = client.chat.completions.create(**base, seed=seed, parallel_tool_calls=False,
                                               tool_choice={"type": "function", "function": {"name": "add"}})
        calls = _validate_calls(named.choices[0].message.tool_calls, names=("add",))
        assert len(calls) == 1


def test_a_tool_result_turn_answers_as_in_process(server, local):
    """The assistant's calls and a tool turn with their result go back in, as the OpenAI client sends them."""
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    call = client.chat.completions.create(model="qwen2", messages=ASK, tools=OPENAI_TOOLS, tool_choice="required",
                                          parallel_tool_calls=False, max_tokens=150, seed=5).choices[0].message
    turns = ASK + [call.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": c.id, "content": "18 degrees, sunny"} for c in call.tool_calls]
    reply = client.chat.completions.create(model="qwen2", messages=turns, tools=OPENAI_TOOLS, tool_choice="none",
                                           max_tokens=20, seed=5)
    assert reply.choices[0].message.content == local.run({"messages": turns, "tools": OPENAI_TOOLS,
                                                          "max_tokens": 20, "seed": 5},
                                                         tool_choice="none")["response"]


@pytest.mark.parametrize("params,param", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"tools": OPENAI_TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": OPENAI_TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": OPENAI_TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"messages": [{"role": "tool", "content": "x", "tool_calls": []}]}, "messages[0].tool_calls"),
])
def test_bad_tools_are_a_400_naming_them(server, params, param):
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**{"model": "qwen2", "messages": ASK, "max_tokens": 4, **params})
    assert err.value.param == param, err.value.body
