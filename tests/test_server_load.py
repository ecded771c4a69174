"""``awqinfer serve`` under load and abuse: many clients, clients that leave, a full queue, random bodies,
a wrong key, SIGTERM. Every wait is bounded, so a hang fails the test instead of stalling the run.

The tiny Qwen2 checkpoint decodes greedily without ever reaching EOS on these prompts (checked
below), so a generation lasts exactly max_tokens steps and a client can leave in the middle of it.
"""

from __future__ import annotations

import json
import signal
import socket
import threading

import openai
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import awqinfer
from serving import LONG_TOKENS, Server, first_line, make_long_model, metric, sse_events, wait_for

LONG = {"prompt": "Tell me a story", "temperature": 0}  # greedy: no EOS before the context is full


@pytest.fixture(scope="module")
def cwd(tmp_path_factory, tiny_qwen2):
    root = tmp_path_factory.mktemp("served")
    (root / "tiny-qwen2").symlink_to(tiny_qwen2)
    make_long_model(root / "long-qwen2")
    return root


@pytest.fixture(scope="module")
def server(cwd):
    with Server("--model", "tiny-qwen2", "--max-batch", "4", "--max-queue", "32", "--no-access-log", cwd=cwd) as s:
        yield s


def run_url(server, model="tiny-qwen2"):
    return f"{server.url}/ai/run/{model}"


def test_the_long_prompt_really_runs_to_max_tokens(tiny_qwen2):
    """The premise of the tests below: these generations end by length, not by an EOS."""
    result = awqinfer.load(tiny_qwen2).run({**LONG, "max_tokens": 200})
    assert result["finish_reason"] == "length" and result["usage"]["completion_tokens"] == 200


def test_sixteen_streams_a_third_leave_mid_stream(server, tiny_qwen2):
    expected = awqinfer.load(tiny_qwen2).run({**LONG, "max_tokens": 30})["response"]
    cancelled_before = metric(server.url, 'awqinfer_generations_total{outcome="cancelled"}')
    results, errors = {}, []

    def finishing(i):
        with requests.post(run_url(server), json={**LONG, "max_tokens": 30, "stream": True}, stream=True,
                           timeout=120) as response:
            events = sse_events(response)
        results[i] = events

    def leaving(i):
        response = requests.post(run_url(server), json={**LONG, "max_tokens": 200, "stream": True}, stream=True,
                                 timeout=120)
        lines = response.iter_lines()
        first = next(line for line in lines if line)
        response.close()  # leaves after the first event; 200 steps would take far longer
        results[i] = first

    def guarded(target, i):
        try:
            target(i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((i, e))

    threads = [threading.Thread(target=guarded, args=(leaving if i % 3 == 0 else finishing, i)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not any(t.is_alive() for t in threads), "a client is still waiting"
    assert not errors, errors
    for i, events in results.items():
        if i % 3:
            assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] == 30
            assert "".join(e["response"] for e in events[:-1]) == expected
        else:
            assert events.startswith(b"data: ")
    wait_for(lambda: metric(server.url, "awqinfer_requests_running") == 0, 60, "the running gauge to return to 0")
    assert metric(server.url, "awqinfer_requests_waiting") == 0
    assert metric(server.url, "awqinfer_kv_cache_bytes") == 0  # every cache freed
    left = sum(1 for i in range(16) if i % 3 == 0)
    assert metric(server.url, 'awqinfer_generations_total{outcome="cancelled"}') == cancelled_before + left
    after = requests.post(run_url(server), json={"prompt": "Hello", "max_tokens": 3}, timeout=60)
    assert after.status_code == 200 and after.json()["result"]["usage"]["completion_tokens"] == 3


def test_a_client_leaving_a_plain_request_stops_its_generation(server):
    before = metric(server.url, 'awqinfer_generations_total{outcome="cancelled"}')
    body = json.dumps({**LONG, "max_tokens": 200}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /ai/run/tiny-qwen2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_for(lambda: metric(server.url, "awqinfer_requests_running") == 1, 60, "the generation to start")
    wait_for(lambda: metric(server.url, 'awqinfer_generations_total{outcome="cancelled"}') == before + 1, 30,
             "the generation to be cancelled")
    assert metric(server.url, "awqinfer_requests_running") == 0 and metric(server.url, "awqinfer_kv_cache_bytes") == 0


def test_a_full_queue_is_429_with_code_3040(cwd):
    with Server("--model", "tiny-qwen2", "--max-batch", "1", "--max-queue", "0", "--no-access-log", cwd=cwd) as s:
        with requests.post(run_url(s), json={**LONG, "max_tokens": 200, "stream": True}, stream=True) as busy:
            assert busy.status_code == 200  # --max-queue 0 still runs what fits in the batch at once
            first_line(busy)  # the one place in the batch is generating now
            refused = requests.post(run_url(s), json={"prompt": "Hello", "max_tokens": 2})
            assert refused.status_code == 429 and refused.json()["errors"][0]["code"] == 3040
            with pytest.raises(openai.RateLimitError):
                openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0).chat.completions.create(
                    model="tiny-qwen2", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
            assert metric(s.url, "awqinfer_requests_rejected_total") == 2
        wait_for(lambda: metric(s.url, "awqinfer_requests_running") == 0, 30, "the slot to be free")
        assert requests.post(run_url(s), json={"prompt": "Hello", "max_tokens": 2}).status_code == 200


def test_the_api_key_guards_every_route_but_health(cwd):
    with Server("--model", "tiny-qwen2", "--no-access-log", cwd=cwd, env={"AWQINFER_API_KEY": "s3cret"}) as s:
        good, bad = {"Authorization": "Bearer s3cret"}, {"Authorization": "Bearer s3cret-not"}
        assert requests.get(s.url + "/health").status_code == 200
        page = requests.get(s.url + "/")
        assert page.status_code == 200 and "const NEEDS_KEY = true;" in page.text  # the page asks for the key
        for headers in ({}, bad, {"Authorization": "s3cret"}, {"Authorization": "Basic s3cret"}):
            response = requests.post(run_url(s), json={"prompt": "Hi", "max_tokens": 2}, headers=headers)
            assert response.status_code == 401 and response.json()["errors"][0]["code"] == 10000
            assert requests.get(s.url + "/metrics", headers=headers).status_code == 401
            assert requests.get(s.url + "/v1/models", headers=headers).json()["error"]["code"] == "invalid_api_key"
        assert requests.post(run_url(s), json={"prompt": "Hi", "max_tokens": 2}, headers=good).status_code == 200
        assert requests.get(s.url + "/metrics", headers=good).status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0).models.list()
        assert openai.OpenAI(base_url=s.url + "/v1", api_key="s3cret").models.list().data[0].id == "tiny-qwen2"


def test_sigterm_finishes_short_streams_and_cuts_long_ones_cleanly(cwd):
    s = Server("--model", "long-qwen2", "--shutdown-timeout", "5", "--no-access-log", cwd=cwd)
    try:
        requests.post(run_url(s, "long-qwen2"), json={"prompt": "Hi", "max_tokens": 2})  # kernels loaded
        short = requests.post(run_url(s, "long-qwen2"), json={**LONG, "max_tokens": 20, "stream": True}, stream=True)
        long = requests.post(run_url(s, "long-qwen2"), json={**LONG, "max_tokens": LONG_TOKENS, "stream": True}, stream=True)
        for response in (short, long):
            assert response.status_code == 200
        s.proc.send_signal(signal.SIGTERM)
        short_events, long_events = sse_events(short), sse_events(long)  # complete responses: no reset
        assert short_events[-1] == "[DONE]" and short_events[-2]["usage"]["completion_tokens"] == 20
        assert long_events[-1] == "[DONE]" and "usage" not in long_events[-2]
        assert long_events[-2]["errors"][0]["code"] == 3040 and "shutting down" in long_events[-2]["errors"][0]["message"]
        assert s.stop(timeout=30) == 0
        with pytest.raises(requests.ConnectionError):
            requests.get(s.url + "/health", timeout=5)
    finally:
        s.stop(signal.SIGKILL)


# --- random bodies: never a 500, never a dead server ----------------------------------------

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                      max_size=4), max_leaves=12)
FIELD_NAMES = ["prompt", "messages", "raw", "stream", "max_tokens", "temperature", "top_p", "top_k", "seed",
               "repetition_penalty", "frequency_penalty", "presence_penalty", "lora", "n", "stop", "model"]
near_schema = st.fixed_dictionaries(
    {"max_tokens": st.one_of(st.integers(-2, 4), json_values)},
    optional={name: st.one_of(json_values, st.text(min_size=1, max_size=30),
                              st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "bot"]),
                                                              "content": st.text(max_size=30)}), max_size=3))
              for name in FIELD_NAMES if name != "max_tokens"})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(body=st.one_of(json_values, near_schema), route=st.sampled_from(["workers", "chat", "completions"]))
def test_random_bodies_never_get_a_500(server, body, route):
    if route != "workers" and isinstance(body, dict):
        body = {"model": "tiny-qwen2", **body}
    url = {"workers": run_url(server), "chat": server.url + "/v1/chat/completions",
           "completions": server.url + "/v1/completions"}[route]
    response = requests.post(url, data=json.dumps(body), timeout=120, stream=True)
    assert response.status_code in (200, 400, 404), (response.status_code, response.text)
    if response.headers["content-type"].startswith("text/event-stream"):
        assert sse_events(response)[-1] == "[DONE]"
    else:
        response.json()
    assert server.proc.poll() is None
