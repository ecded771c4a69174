"""``awqinfer serve --ray``: the server as a Ray Serve application, over real HTTP through Ray's proxy.

One deployment for the module (Ray starts slowly on 2 cores): the real command, ``awqinfer serve
--ray --replicas 2 --replica-cpus 0.5`` (both replicas fit a 2-core machine, one kernel thread
each), which starts its own local Ray instance. Concurrent Workers AI and OpenAI requests,
streamed and not, are checked against LLM.run in this process; each response names the replica
that answered, and both must have answered. At the end SIGTERM must take the replicas, Ray's
proxy and Ray itself (every process the command started) down within a bounded time.

Skipped only when Ray cannot be imported (and then a failure in CI, whose .ci/run installs
``awqinfer[ray]``); the check that nothing else imports Ray always runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import requests

import awqinfer
from serving import LONG_TOKENS, Server, make_long_model, metric, sse_events, wait_for

KEY = "ray-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
GREEDY = {"max_tokens": 8, "temperature": 0}
SEED = 5  # serve --seed: the seed of requests that set none
MESSAGES = [{"role": "system", "content": "You are a friendly assistant"},
            {"role": "user", "content": "Why is pizza so good"}]
SHUTDOWN_TIMEOUT = 60  # seconds for SIGTERM to take down the replicas and the Ray instance


def test_the_plain_server_and_the_cli_never_import_ray():
    """Ray is an optional extra: importing the server and `awqinfer serve --help` must not load it."""
    code = ("import sys, awqinfer.server\n"
            "from awqinfer.cli.main import main\n"
            "try:\n    main(['serve', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('RAY-MODULES', sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode == 0, proc.stderr
    assert "--autoscale MIN:MAX" in proc.stdout  # the Ray flags are documented all the same
    assert proc.stdout.strip().endswith("RAY-MODULES []"), proc.stdout[-500:]


@pytest.mark.parametrize("flags,message", [
    (["--replicas", "2"], "--replicas needs --ray"),
    (["--address", "auto"], "--address needs --ray"),
    (["--ray", "--autoscale", "3:1"], "expected MIN:MAX replicas"),
    (["--ray", "--replicas", "2", "--autoscale", "1:2"], "not allowed with argument"),
    (["--ray", "--replica-memory", "lots"], "expected a size such as 4GB"),
    (["--ray", "--replica-cpus", "0"], "must be at least 0.01"),
])
def test_bad_ray_flags_are_one_line_usage_errors(flags, message):
    proc = subprocess.run([sys.executable, "-m", "awqinfer", "serve", *flags], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def require_ray():
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as e:
        if os.environ.get("AWQINFER_CI") == "1":
            pytest.fail(f"Ray Serve is not installed ({e}); .ci/run installs awqinfer[ray]")
        pytest.skip(f"Ray Serve cannot be imported ({e}); pip install 'awqinfer[ray]'")


def test_replica_sizing_and_autoscaling_options():
    """The deployment Ray gets: fractional CPUs -> one thread; autoscaling targets a full batch per replica."""
    require_ray()
    from awqinfer.server.ray_app import ReplicaSpec, Scaling, deployment_options, replica_threads
    assert [replica_threads(c) for c in (0.25, 1.0, 1.9, 4.0)] == [1, 1, 1, 4]
    spec = ReplicaSpec(models=(None,), threads=1, max_batch=6, max_queue=10, memory=2**30)
    fixed = deployment_options(spec, Scaling(replicas=3, cpus=0.5))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"]["num_cpus"] == 0.5 and fixed["ray_actor_options"]["memory"] == 2**30
    assert fixed["ray_actor_options"]["runtime_env"]["env_vars"]["NUMBA_NUM_THREADS"] == "1"
    assert fixed["max_ongoing_requests"] == 16  # the batch and the replica's own queue
    auto = deployment_options(spec, Scaling(autoscale=(0, 4), cpus=2))["autoscaling_config"]
    assert auto == {"min_replicas": 0, "initial_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 6}


def test_the_proxys_port_is_picked_below_the_ephemeral_range(monkeypatch):
    """Ray's processes take ephemeral ports while it starts; a port picked there once lost the race to them."""
    from awqinfer.cli import serve_ray
    band = range(serve_ray.RAY_WORKER_PORTS_END, serve_ray.ephemeral_ports().start)
    for _ in range(5):
        port = serve_ray.proxy_port("127.0.0.1")
        assert port in band
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free indeed
    with socket.socket() as taken:  # a band with no free port: any free port will do
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        monkeypatch.setattr(serve_ray, "RAY_WORKER_PORTS_END", busy)
        monkeypatch.setattr(serve_ray, "ephemeral_ports", lambda: range(busy + 1, 65536))
        assert serve_ray.proxy_port("127.0.0.1") not in (busy, 0)


# --- one real deployment: two replicas behind Ray's proxy ---------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """Qwen2-shaped tiny checkpoint with room for a long greedy generation (the disconnect test)."""
    return make_long_model(tmp_path_factory.mktemp("ray_qwen2"))


def descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid`` (from /proc: Ray's GCS, raylet, workers, replicas, proxy) -> its start time."""
    children: dict[int, list[tuple[int, str]]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append((int(stat.parent.name), fields[19]))
    found, todo = {}, [pid]
    while todo:
        for child, started in children.get(todo.pop(), []):
            found[child] = started
            todo.append(child)
    return found


def alive(pid: int, started: str) -> bool:
    """Whether ``pid`` is still the process that started at ``started`` (not a reused pid)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19] == started
    except OSError:
        return False


@pytest.fixture(scope="module")
def ray_server(model_dir, tmp_path_factory):
    """`awqinfer serve --ray` with 2 replicas; stopped by SIGTERM, which must end every process it started."""
    require_ray()
    server = Server("--ray", "--replicas", 2, "--replica-cpus", 0.5, "--model", model_dir, "--api-key", KEY,
                    "--max-batch", 4, "--kv-budget", "64MiB", "--seed", SEED, cwd=tmp_path_factory.mktemp("ray_serve"))
    started = descendants(server.proc.pid)
    try:
        yield server
    finally:
        started.update(descendants(server.proc.pid))
        t0 = time.monotonic()
        code = server.stop(signal.SIGTERM, timeout=SHUTDOWN_TIMEOUT)
        port = int(server.url.rsplit(":", 1)[1])
        try:
            assert code == 0, server.log()[-3000:]
            try:
                wait_for(lambda: not any(alive(*p) for p in started.items()), SHUTDOWN_TIMEOUT,
                         "the processes of the Ray instance to exit")
            except AssertionError as e:
                raise AssertionError(f"{e}; still running: {[p for p in started.items() if alive(*p)]}") from None
            with socket.socket() as probe:
                assert probe.connect_ex(("127.0.0.1", port)) != 0, "Ray's proxy still listens"
            assert time.monotonic() - t0 < SHUTDOWN_TIMEOUT
        finally:
            for pid, at in started.items():  # only if the checks above failed: leave nothing running
                if alive(pid, at):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def llm(model_dir):
    return awqinfer.load(model_dir, threads=1)


def run_url(url: str, model_dir, account: bool = False) -> str:
    base = f"{url}/client/v4/accounts/0123456789abcdef/ai" if account else f"{url}/ai"
    return f"{base}/run/{model_dir}"


def replica_of(response) -> tuple[str, int]:
    """The replica that answered (its Ray id, its pid), from the header the Ray wrapper adds."""
    replica, _, pid = response.headers["x-awqinfer-replica"].partition(" pid ")
    return replica, int(pid)


def test_concurrent_workers_ai_and_openai_requests_through_the_proxy(ray_server, model_dir, llm):
    """Twelve requests at once over both APIs, streamed and not: right answers, and both replicas served."""
    url, model = ray_server.url, str(model_dir)
    prompt = {"prompt": "Tell me a story", **GREEDY}
    chat = {"messages": MESSAGES, **GREEDY}

    def workers_ai(inputs, account=False):
        response = requests.post(run_url(url, model_dir, account), json=inputs, headers=AUTH, timeout=120)
        assert response.status_code == 200, response.text
        assert response.json() == {"result": llm.run(inputs), "success": True, "errors": [], "messages": []}
        return replica_of(response)

    def workers_ai_stream(inputs):
        with requests.post(run_url(url, model_dir), json={**inputs, "stream": True}, headers=AUTH, stream=True,
                           timeout=120) as response:
            assert response.status_code == 200, response.text
            events = sse_events(response)
        assert events[-1] == "[DONE]" and "usage" in events[-2]
        assert "".join(e["response"] for e in events[:-1]) == llm.run(inputs)["response"]
        return replica_of(response)

    def openai_chat():
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES, **GREEDY)
        reply = raw.parse()
        assert reply.object == "chat.completion" and reply.choices[0].message.content == llm.run(chat)["response"]
        return replica_of(raw)

    def openai_chat_stream():
        body = {"model": model, "messages": MESSAGES, "stream": True, **GREEDY}
        with requests.post(url + "/v1/chat/completions", json=body, headers=AUTH, stream=True,
                           timeout=120) as response:
            assert response.status_code == 200, response.text
            events = sse_events(response)
        assert events[-1] == "[DONE]" and all(e["object"] == "chat.completion.chunk" for e in events[:-1])
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"])
        assert text == llm.run(chat)["response"]
        return replica_of(response)

    calls = [lambda: workers_ai(prompt), lambda: workers_ai(chat), lambda: workers_ai(chat, account=True),
             lambda: workers_ai_stream(prompt), lambda: workers_ai_stream(chat), openai_chat, openai_chat_stream]
    with ThreadPoolExecutor(len(calls) * 2) as pool:
        futures = [pool.submit(call) for call in calls * 2]
        replicas = {future.result() for future in futures}
    assert len({replica for replica, _ in replicas}) == 2, replicas
    assert len({pid for _, pid in replicas}) == 2 and ray_server.proc.pid not in {pid for _, pid in replicas}


def test_every_replica_takes_the_servers_seed(ray_server, model_dir, llm):
    """--seed reaches the replicas: unseeded sampled requests give what LLM.run gives for that seed."""
    inputs = {"prompt": "Tell me a story", "max_tokens": 12, "temperature": 1.0}
    expected = llm.run({**inputs, "seed": SEED})["response"]
    for _ in range(4):  # both replicas, most likely (the proxy spreads requests)
        response = requests.post(run_url(ray_server.url, model_dir), json=inputs, headers=AUTH, timeout=120)
        assert response.status_code == 200 and response.json()["result"]["response"] == expected, response.text
    assert llm.run({**inputs, "seed": SEED + 1})["response"] != expected


def test_errors_auth_health_and_metrics_keep_their_shapes(ray_server, model_dir):
    url = ray_server.url
    refused = requests.post(run_url(url, model_dir), json={"prompt": "hi"}, timeout=60)
    assert refused.status_code == 401 and refused.json()["success"] is False
    bad = requests.post(run_url(url, model_dir), json={"prompt": "hi", "temperature": 9}, headers=AUTH, timeout=60)
    assert bad.status_code == 400 and bad.json()["errors"][0]["code"] == 5006, bad.text
    missing = requests.post(url + "/v1/chat/completions", headers=AUTH, timeout=60,
                            json={"model": "no/such-model", "messages": MESSAGES})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found", missing.text
    health = requests.get(url + "/health", timeout=60)  # open without the key, as in the plain server
    assert health.status_code == 200 and health.json()["models"] == [str(model_dir)]
    metrics = requests.get(url + "/metrics", headers=AUTH, timeout=60)
    assert metrics.status_code == 200 and "awqinfer_generations_total" in metrics.text
    assert metric(url, "awqinfer_kv_cache_budget_bytes", AUTH) == 64 * 2**20  # --kv-budget, per replica
    assert "x-awqinfer-replica" in metrics.headers


def cancelled_on(url: str, replica: str) -> float:
    """awqinfer_generations_total{outcome="cancelled"} of ``replica``, asking until Ray routes there."""
    for _ in range(100):
        response = requests.get(url + "/metrics", headers=AUTH, timeout=60)
        if replica_of(response)[0] == replica:
            line = next(x for x in response.text.splitlines()
                        if x.startswith('awqinfer_generations_total{outcome="cancelled"}'))
            return float(line.split()[-1])
    raise AssertionError(f"Ray's proxy never routed /metrics to replica {replica}")


def test_a_client_that_leaves_cancels_the_replicas_generation(ray_server, model_dir):
    """A greedy LONG_TOKENS stream (a minute of work) cut after two events is cancelled on its replica."""
    url = ray_server.url
    with requests.post(run_url(url, model_dir), headers=AUTH, stream=True, timeout=60,
                       json={"prompt": "Tell me a story", "max_tokens": LONG_TOKENS, "temperature": 0, "stream": True}) as r:
        assert r.status_code == 200
        replica = replica_of(r)[0]
        before = cancelled_on(url, replica)  # counted while this stream runs: it has not ended
        lines = r.iter_lines()
        assert next(line for line in lines if line).startswith(b"data: ")
    wait_for(lambda: cancelled_on(url, replica) > before, 60, "the replica to cancel the abandoned generation")
