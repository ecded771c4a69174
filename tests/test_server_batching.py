"""``awqinfer serve`` on the engine's continuous batching: concurrent streams decode together in one
scheduler, its counts and the KV budget are what /metrics shows, and the load flags reach the engine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest
import requests

from checkpoints import make_model, set_chat_template
from serving import Server, first_line, metric, sse_events, wait_for

LONG = {"prompt": "Tell me a story", "temperature": 0}  # greedy: no EOS before max_tokens (test_server_load)
HOSTILE = "{{ ''.__class__.__mro__[1].__subclasses__() }}"  # a chat template that tries to leave its sandbox


@pytest.fixture(scope="module")
def cwd(tmp_path_factory, tiny_qwen2):
    root = tmp_path_factory.mktemp("served")
    (root / "tiny-qwen2").symlink_to(tiny_qwen2)
    make_model(root / "long-qwen2", "qwen2", max_positions=4096)
    set_chat_template(make_model(root / "broken-template", "qwen2"), HOSTILE)
    return root


@pytest.fixture(scope="module")
def server(cwd):
    with Server("--model", "long-qwen2", "--max-batch", "4", "--kv-budget", "1MB", "--no-access-log",
                cwd=cwd) as s:
        yield s


def test_two_streams_are_stepped_together_by_the_scheduler(server):
    """Both streams are running in the scheduler's batch at once (not one after the other), then both end."""
    url = f"{server.url}/ai/run/long-qwen2"
    body = {**LONG, "max_tokens": 1500, "stream": True}
    streams = [requests.post(url, json=body, stream=True, timeout=60) for _ in range(2)]
    try:
        for response in streams:
            assert response.status_code == 200
            assert first_line(response).startswith(b"data: {")
        assert metric(server.url, "awqinfer_requests_running") == 2
        assert metric(server.url, "awqinfer_requests_waiting") == 0
        held = metric(server.url, "awqinfer_kv_cache_bytes")
        budget = metric(server.url, "awqinfer_kv_cache_budget_bytes")
        assert budget == 10**6 and held > 0  # the two sequences' reservations, from the engine's budget
        assert metric(server.url, "awqinfer_kv_cache_usage_ratio") == pytest.approx(held / budget)
        assert requests.get(server.url + "/health").json()["running"] == 2
    finally:
        for response in streams:
            response.close()
    wait_for(lambda: metric(server.url, "awqinfer_requests_running") == 0, 60, "both streams to be cancelled")
    assert metric(server.url, "awqinfer_kv_cache_bytes") == 0


def test_a_stream_alongside_another_gives_its_solo_text(server):
    """Batched with a long stream, a short one gets exactly the text it gets alone."""
    url = f"{server.url}/ai/run/long-qwen2"
    alone = requests.post(url, json={**LONG, "max_tokens": 12}, timeout=60).json()["result"]["response"]
    with requests.post(url, json={**LONG, "max_tokens": 1500, "stream": True}, stream=True, timeout=60) as busy:
        first_line(busy)
        with requests.post(url, json={**LONG, "max_tokens": 12, "stream": True}, stream=True, timeout=60) as short:
            events = sse_events(short)
        # the short one is retired at the end of its last step; the long one runs on
        wait_for(lambda: metric(server.url, "awqinfer_requests_running") == 1, 10, "the short one to be retired")
    assert "".join(e["response"] for e in events[:-1]) == alone and events[-2]["usage"]["completion_tokens"] == 12


def test_a_request_larger_than_the_whole_kv_budget_is_a_400(server):
    """1 MB holds 3906 positions of long-qwen2's float16 cache (256 bytes each); this request needs 4096."""
    too_big = requests.post(f"{server.url}/ai/run/long-qwen2",
                            json={"prompt": "Hi", "max_tokens": 4095})
    assert too_big.status_code == 400, too_big.text
    error = too_big.json()["errors"][0]
    assert error["code"] == 5006 and "KV budget" in error["message"] and "--kv-budget" in error["message"]


def test_a_broken_chat_template_is_the_servers_fault_in_both_shapes(server):
    """TemplateCheckpointError: a 500 that says what is broken, in the route's own shape, no traceback."""
    workers = requests.post(f"{server.url}/ai/run/broken-template", json={"prompt": "Hi", "max_tokens": 2})
    assert workers.status_code == 500 and workers.json()["success"] is False
    message = workers.json()["errors"][0]["message"]
    assert "chat template" in message and "sandbox" in message and "Traceback" not in message
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model="broken-template", messages=[{"role": "user", "content": "Hi"}])
    assert raised.value.body["code"] == "broken_chat_template" and raised.value.body["type"] == "server_error"
    raw = requests.post(f"{server.url}/ai/run/broken-template", json={"prompt": "Hi", "raw": True, "max_tokens": 2})
    assert raw.status_code == 200  # no template involved: the model itself is fine
    assert server.proc.poll() is None


def awqinfer_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "awqinfer", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})


def test_run_and_serve_share_the_kv_budget_flag(cwd):
    """--kv-budget is parsed alike by every command (kv_budget.parse_bytes), and reaches the engine."""
    for command in ("run", "chat", "serve"):
        bad = awqinfer_cli(command, "--kv-budget", "lots", cwd=cwd)
        assert bad.returncode == 2 and "--kv-budget" in bad.stderr and "4GB" in bad.stderr, bad.stderr
    small = awqinfer_cli("run", "--model", "long-qwen2", "--kv-budget", "1MB", "--max-tokens", "4000", "Hi", cwd=cwd)
    assert small.returncode == 2 and "KV budget" in small.stderr and "Traceback" not in small.stderr, small.stderr
    ok = awqinfer_cli("run", "--model", "tiny-qwen2", "--kv-budget", "8M", "--max-tokens", "3", "Hi", cwd=cwd)
    assert ok.returncode == 0, ok.stderr


def test_sixteen_requests_against_a_budget_that_holds_three_all_complete(server):
    """--kv-budget 1MB holds 3906 positions: three requests of ~1260 at a time, though --max-batch is 4.
    Sixteen sent at once all answer 200 (the others wait for room, none fails), at most three running."""
    import threading

    results, peak, done = [None] * 16, [0], threading.Event()

    def send(i):
        results[i] = requests.post(f"{server.url}/ai/run/long-qwen2",
                                   json={"prompt": f"Hi {i}", "max_tokens": 1240, "temperature": 0}, timeout=600)

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], metric(server.url, "awqinfer_requests_running"))
            done.wait(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    senders = [threading.Thread(target=send, args=(i,)) for i in range(16)]
    for t in senders:
        t.start()
    for t in senders:
        t.join(timeout=600)
    done.set()
    watcher.join()
    assert all(r is not None and r.status_code == 200 for r in results), [r and r.text for r in results]
    assert all(r.json()["result"]["usage"]["completion_tokens"] >= 1 for r in results)
    assert 2 <= peak[0] <= 3  # batched, and bounded by the budget, not by --max-batch
    assert metric(server.url, "awqinfer_kv_cache_bytes") == 0
