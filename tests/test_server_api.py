"""``awqinfer serve`` over real HTTP: the Workers AI routes, the OpenAI routes, errors, /health and /metrics.

One server subprocess for the module, on tiny checkpoints: ``tiny-qwen2`` loaded at start,
``tiny-llama`` on first use. Answers are compared with ``LLM.run`` in this process.
"""

from __future__ import annotations

import json
import math
import subprocess

import openai
import pytest
import requests

import awqinfer
import test_inputs
from awqinfer.engine.text.inputs import parse_inputs
from serving import Server, metric, require_tool, sse_events, wait_for

ACCOUNT_ID = "0123456789abcdef"
MESSAGES = [{"role": "system", "content": "You are a friendly assistant"},
            {"role": "user", "content": "Why is pizza so good"}]
GREEDY = {"max_tokens": 8, "temperature": 0}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, tiny_qwen2, tiny_llama):
    """The server's working directory: the tiny checkpoints under short names."""
    root = tmp_path_factory.mktemp("served")
    (root / "tiny-qwen2").symlink_to(tiny_qwen2)
    (root / "tiny-llama").symlink_to(tiny_llama)
    return root


@pytest.fixture(scope="module")
def server(models_dir):
    with Server("--model", "tiny-qwen2", "--no-access-log", cwd=models_dir, env={"HF_HUB_OFFLINE": "1"}) as s:
        yield s


@pytest.fixture(scope="module")
def url(server):
    return server.url


@pytest.fixture(scope="module")
def qwen(tiny_qwen2):
    return awqinfer.load(tiny_qwen2)


def run_url(url, model="tiny-qwen2", account=True):
    return f"{url}/client/v4/accounts/{ACCOUNT_ID}/ai/run/{model}" if account else f"{url}/ai/run/{model}"


# --- the Workers AI routes --------------------------------------------------------------------


def test_the_seeds_requests_call(url, qwen):
    """The seed's Python example, pointed at the local server: an envelope around LLM.run's result."""
    response = requests.post(run_url(url), headers={"Authorization": "Bearer any-token"},
                             json={"messages": MESSAGES, **GREEDY})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {"result": qwen.run({"messages": MESSAGES, **GREEDY}), "success": True, "errors": [],
                    "messages": []}


def test_the_seeds_curl_call(url, qwen):
    """The seed's curl line as written: -X POST, a Bearer header, -d (which sends a form content type)."""
    curl = require_tool("curl", install="apt-get install curl")
    data = json.dumps({"messages": MESSAGES, **GREEDY})
    proc = subprocess.run([curl, "-s", run_url(url), "-X", "POST", "-H", "Authorization: Bearer $TOKEN", "-d", data],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["result"] == qwen.run({"messages": MESSAGES, **GREEDY})


def test_streaming_is_sse_ending_in_done_and_equals_the_plain_answer(url, qwen):
    inputs = {"prompt": "Tell me a story", "max_tokens": 24, "temperature": 1.0, "seed": 7}
    with requests.post(run_url(url, account=False), json={**inputs, "stream": True}, stream=True) as response:
        assert response.status_code == 200
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    *texts, last = events[:-1]
    assert texts and all(set(e) == {"response"} and e["response"] for e in texts)
    assert last["response"] == "" and set(last) == {"response", "usage"}
    plain = requests.post(run_url(url), json=inputs).json()["result"]
    assert "".join(e["response"] for e in texts) == plain["response"] == qwen.run(inputs)["response"]
    assert last["usage"] == plain["usage"]


def test_a_model_not_loaded_at_start_loads_on_first_use(url, tiny_llama):
    assert "tiny-llama" not in requests.get(url + "/health").json()["models"]
    response = requests.post(run_url(url, "tiny-llama"), json={"prompt": "Hello", **GREEDY})
    assert response.status_code == 200, response.text
    assert response.json()["result"] == awqinfer.load(tiny_llama).run({"prompt": "Hello", **GREEDY})
    assert "tiny-llama" in requests.get(url + "/health").json()["models"]
    assert "tiny-llama" in [m["id"] for m in requests.get(url + "/v1/models").json()["data"]]


def _violations():
    """Every bad inputs dict of tests/test_inputs.py: (inputs, the field the error must name)."""
    cases = []
    for field, (_, bad, _) in test_inputs.NUMBERS.items():
        cases += [({**test_inputs.BASE, field: value}, field) for value in bad]
    cases += [({**test_inputs.BASE, flag: value}, flag) for flag in ("raw", "stream")
              for value in (1, 0, "true", None, [True])]
    cases += [({"messages": m}, "messages") for m, _ in test_inputs.test_messages_bad.pytestmark[0].args[1]]
    cases += [(inputs, None) for inputs, _ in test_inputs.test_structure.pytestmark[0].args[1]]
    for field, value in test_inputs.test_schema_fields_not_implemented_are_refused_not_ignored.pytestmark[0].args[1]:
        base = {"prompt": "a"} if field in ("lora", "image") else {"messages": [{"role": "user", "content": "a"}]}
        cases.append(({**base, field: value}, field))
    cases += [({"prompt": ""}, "prompt"), ({"prompt": "a\ud800b"}, "prompt")]
    return cases


@pytest.mark.parametrize("inputs,field", _violations(), ids=lambda v: str(v) if isinstance(v, str) or v is None else "")
def test_every_schema_violation_is_a_400_with_code_5006_naming_the_field(url, inputs, field):
    response = requests.post(run_url(url), data=_dumps(inputs))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["success"] is False and body["result"] is None and len(body["errors"]) == 1
    error = body["errors"][0]
    assert error["code"] == 5006
    try:
        parse_inputs(json.loads(_dumps(inputs), parse_int=_int))
    except awqinfer.InputError as e:
        assert error["message"] == f"AiError: Bad input: {e}"  # the engine's own words
    if field is not None:
        assert error["message"].startswith(f"AiError: Bad input: {field}")


def _dumps(inputs) -> str:
    """JSON text of ``inputs``: NaN and Infinity as JavaScript writes them, 10**5000 digit by digit."""
    if not isinstance(inputs, dict):
        return json.dumps(inputs)
    huge = {k for k, v in inputs.items() if type(v) is int and v.bit_length() > 14000}
    text = json.dumps({k: "HUGE" if k in huge else v for k, v in inputs.items()})
    return text.replace('"HUGE"', "1" + "0" * 5000)


def _int(digits):  # as the server reads integers too long for int() (web.py)
    return int(digits) if len(digits) <= 4300 else math.inf


def test_a_prompt_longer_than_the_context_is_a_400_before_streaming(url):
    response = requests.post(run_url(url), json={"prompt": "word " * 2000, "stream": True})
    assert response.status_code == 400
    assert response.json()["errors"][0]["message"].startswith("AiError: Bad input: prompt: got ")


@pytest.mark.parametrize("body,status,code,needle", [
    (b'{"prompt": "Hello"', 400, 5006, "body: not valid JSON"),
    (b"\xff\xfe\x00garbage", 400, 5006, "body: not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, 400, 5006, "body: not valid JSON"),
    (b"", 400, 3003, "missing a body"),
])
def test_malformed_bodies(url, body, status, code, needle):
    response = requests.post(run_url(url), data=body)
    assert response.status_code == status
    assert response.json()["errors"][0]["code"] == code and needle in response.json()["errors"][0]["message"]


def test_unknown_models_are_400_with_code_5007_and_say_how_to_fetch(url):
    response = requests.post(run_url(url, "@cf/qwen/qwen1.5-7b-chat-awq"), json={"prompt": "Hello"})
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["code"] == 5007 and error["message"].startswith("AiError: No such model @cf/qwen/qwen1.5-7b-chat-awq")
    assert "hf download Qwen/Qwen1.5-7B-Chat-AWQ" in error["message"] and "--model" in error["message"]
    nothing = requests.post(run_url(url, "no-such-model"), json={"prompt": "Hello"})
    assert nothing.status_code == 400 and nothing.json()["errors"][0]["code"] == 5007
    assert "no-such-model" in nothing.json()["errors"][0]["message"]
    for odd in ("bad%00name", "a--b/" + "c" * 200, "%2E%2E"):  # a NUL byte, a malformed repo id, a directory
        response = requests.post(run_url(url, odd), json={"prompt": "Hello"})
        assert response.status_code == 400 and response.json()["errors"][0]["code"] == 5007, response.text


def test_a_body_over_10_mb_is_413_with_code_3006(url):
    big = json.dumps({"prompt": "x" * (10 * 1024 * 1024)})
    response = requests.post(run_url(url), data=big)
    assert response.status_code == 413 and response.json()["errors"][0]["code"] == 3006
    chunked = requests.post(run_url(url), data=iter([big[i:i + 65536].encode() for i in range(0, len(big), 65536)]))
    assert chunked.status_code == 413  # no Content-Length: counted as it arrives


def test_unknown_routes_and_methods_answer_in_the_envelope(url):
    assert requests.get(run_url(url)).json()["errors"][0]["code"] == 7001
    missing = requests.get(url + "/client/v4/nothing")
    assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == 7000
    assert requests.get(url + "/v1/nothing").json()["error"]["code"] == "not_found"


def test_health_and_metrics(url):
    health = requests.get(url + "/health").json()
    assert health["status"] == "ok" and "tiny-qwen2" in health["models"]
    text = requests.get(url + "/metrics").text
    for name in ("awqinfer_requests_running", "awqinfer_requests_waiting", "awqinfer_prompt_tokens_total",
                 "awqinfer_generation_tokens_total", "awqinfer_time_to_first_token_seconds_bucket",
                 "awqinfer_time_per_output_token_seconds_bucket", "awqinfer_kv_cache_bytes"):
        assert f"\n{name}" in text, name
    before = metric(url, "awqinfer_generation_tokens_total")
    requests.post(run_url(url), json={"prompt": "Hello", **GREEDY})
    assert metric(url, "awqinfer_generation_tokens_total") == before + 8
    # the scheduler retires a finished sequence at the end of the step that made its last token
    wait_for(lambda: metric(url, "awqinfer_requests_running") == 0 and metric(url, "awqinfer_kv_cache_bytes") == 0,
             10, "the finished sequence to be retired")


# --- the OpenAI routes, through OpenAI's own client ----------------------------------------------


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def test_chat_completions_equal_the_workers_ai_answer(client, qwen):
    reply = client.chat.completions.create(model="tiny-qwen2", messages=MESSAGES, **GREEDY)
    expected = qwen.run({"messages": MESSAGES, **GREEDY})
    assert reply.object == "chat.completion" and reply.model == "tiny-qwen2" and len(reply.choices) == 1
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == expected["response"]
    assert reply.choices[0].finish_reason == expected["finish_reason"] == "length"
    assert {k: getattr(reply.usage, k) for k in expected["usage"]} == expected["usage"]


def test_chat_streams_with_usage_and_the_same_text_for_a_seed(client):
    params = dict(model="tiny-qwen2", messages=MESSAGES, max_tokens=20, temperature=0.9, seed=42)
    whole = client.chat.completions.create(**params)
    chunks = list(client.chat.completions.create(**params, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])
    plain = list(client.chat.completions.create(**params, stream=True))
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason is not None


def test_completions_run_the_prompt_raw(client, qwen):
    expected = qwen.run({"prompt": "Once upon a time", "raw": True, **GREEDY})
    reply = client.completions.create(model="tiny-qwen2", prompt="Once upon a time", **GREEDY)
    assert reply.object == "text_completion" and reply.choices[0].text == expected["response"]
    assert reply.usage.prompt_tokens == expected["usage"]["prompt_tokens"]
    stream = client.completions.create(model="tiny-qwen2", prompt=["Once upon a time"], stream=True,
                                       stream_options={"include_usage": True}, **GREEDY)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected["response"]
    assert chunks[-1].usage.completion_tokens == expected["usage"]["completion_tokens"]


def test_stop_sequences_end_the_text_before_them(client):
    params = dict(model="tiny-qwen2", messages=MESSAGES, max_tokens=40, temperature=0)
    full = client.chat.completions.create(**params).choices[0].message.content
    stop = full[len(full) // 2:len(full) // 2 + 2]
    assert stop.strip() and len(full) > 6, full
    cut = client.chat.completions.create(**params, stop=[stop, "never-there"])
    assert cut.choices[0].message.content == full[:full.index(stop)]
    assert cut.choices[0].finish_reason == "stop" and cut.usage.completion_tokens < 40
    streamed = client.chat.completions.create(**params, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == full[:full.index(stop)]


@pytest.mark.parametrize("params,param", [
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"frequency_penalty": -1}, "frequency_penalty"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"seed": 0}, "seed"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 5, "max_completion_tokens": 6}, "max_completion_tokens"),
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"logit_bias": {"5": 10}}, "logit_bias"),
    ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "no-schema"}}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
     "response_format.json_schema"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"extra_body": {"best_of": 3}}, "best_of"),
    ({"extra_body": {"mirostat": 1}}, "mirostat"),
    ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "messages[0].name"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"messages": []}, "messages"),
])
def test_unsupported_or_out_of_range_parameters_are_a_400_naming_them(client, params, param):
    base = {"model": "tiny-qwen2", "messages": MESSAGES, "max_tokens": 4}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**{**base, **params})
    assert err.value.status_code == 400 and err.value.param == param, err.value.body
    assert err.value.body["type"] == "invalid_request_error" and param.split("[")[0] in err.value.body["message"]


def test_openai_parameters_that_ask_for_nothing_are_accepted(client):
    reply = client.chat.completions.create(
        model="tiny-qwen2", max_completion_tokens=3, n=1, logprobs=False, tools=[], tool_choice="none",
        response_format={"type": "text"}, user="someone", store=False, top_p=1, frequency_penalty=0,
        messages=[{"role": "developer", "content": "Be brief"},
                  {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]}])
    assert reply.usage.completion_tokens == 3


def test_openai_errors_for_models_bodies_and_the_account_path(url, client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no/such-model", messages=MESSAGES)
    assert err.value.body["code"] == "model_not_found" and "no/such-model" in err.value.body["message"]
    response = requests.post(url + "/v1/chat/completions", data=b"{nope")
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    account = openai.OpenAI(base_url=f"{url}/client/v4/accounts/{ACCOUNT_ID}/ai/v1", api_key="x")
    assert account.chat.completions.create(model="tiny-qwen2", messages=MESSAGES, max_tokens=2).usage.completion_tokens == 2
    assert "tiny-qwen2" in [m.id for m in account.models.list()]
    assert client.models.retrieve("tiny-qwen2").id == "tiny-qwen2"
