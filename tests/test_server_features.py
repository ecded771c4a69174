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
