"""``awqinfer serve --ray``: the same server (create_app) as a Ray Serve application, on one machine or many.

    this process (the driver)                      each replica (a Ray actor on some node)
    ray.init(): a local instance, or --address     Replica.__init__: its kernel threads and KV budget
    serve.start(): Ray's HTTP proxy on host:port     from its Ray resources; every --model loaded once
    serve.run(Replica.options(...).bind(spec))     __serve_build_asgi_app__: create_app(...), the plain
    a signal -> serve.delete / serve.shutdown        server's app, plus a header naming the replica

Requests reach Ray's proxy, which routes each to the replica with the fewest ongoing requests
of two picked at random; the replica's app answers exactly as ``awqinfer serve`` does (routes,
envelope, errors, streaming, the API key, /metrics, each replica its own). When a client leaves,
the proxy cancels the request on its replica, and the app's disconnect handling stops the
generation. Each replica batches its own requests (--max-batch running, --max-queue waiting,
then HTTP 429).

Sizing: a replica reserves ``cpus`` of Ray's CPU resource and runs its kernels on that many
threads (at least one; Numba's pool is made that size too), so two replicas on a 2-core machine
use one core each instead of four threads fighting over two cores. Its KV budget is half of
``memory`` when one is given (Ray also reserves that memory), else its CPU share of the
machine's default budget. Autoscaling (--autoscale MIN:MAX) is Ray Serve's: it adds a replica
when the ongoing requests per replica (running + queued, averaged over recent seconds) exceed
--max-batch, and removes one when they fall well below.

Only this module imports Ray; nothing else in awqinfer does, so the plain server never needs it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass

import ray
from ray import serve

import awqinfer

from .app import create_app
from .models import Models

APP_NAME = "awqinfer"
REPLICA_KV_SHARE = 0.5  # of the memory reserved for a replica: its KV budget
REPLICA_HEADER = "x-awqinfer-replica"  # on every response: which replica answered (its Ray id and pid)


@dataclass(frozen=True)
class ReplicaSpec:
    """What each replica serves and how: sent to every replica, wherever it runs."""

    models: tuple  # names to load at start (None: the default model)
    device: str = "cpu"
    threads: int = 1
    keep_models: int = 2
    max_batch: int = 4
    max_queue: int = 32
    api_key: str | None = None
    memory: int | None = None  # bytes reserved from Ray per replica; None: none reserved
    kv_budget: int | None = None  # each replica's KV budget in bytes (--kv-budget); None: from memory or CPUs
    lora_dir: str | None = None  # PEFT adapters for every model (--lora-dir)
    seed: int | None = None  # the seed of requests that set none (--seed)


@dataclass(frozen=True)
class Scaling:
    """How many replicas (fixed, or autoscaled between low and high) and what each reserves."""

    replicas: int = 1
    autoscale: tuple[int, int] | None = None  # (min, max)
    cpus: float = 1.0
    shutdown_timeout: float = 5.0


def replica_threads(cpus: float) -> int:
    """Kernel threads for a replica holding ``cpus`` of Ray's CPU resource: whole cores, at least one."""
    return max(1, int(cpus))


def deployment_options(spec: ReplicaSpec, scaling: Scaling) -> dict:
    """The Ray Serve deployment options for ``scaling``: replicas, autoscaling and per-replica resources."""
    actor = {"num_cpus": scaling.cpus, "runtime_env": {"env_vars": {"NUMBA_NUM_THREADS": str(spec.threads)}}}
    if spec.memory is not None:
        actor["memory"] = spec.memory
    options = {"ray_actor_options": actor,
               # a replica takes its batch and its own queue; the router holds anything beyond
               "max_ongoing_requests": spec.max_batch + spec.max_queue,
               "graceful_shutdown_timeout_s": scaling.shutdown_timeout}
    if scaling.autoscale is None:
        options["num_replicas"] = scaling.replicas
    else:
        low, high = scaling.autoscale
        options["autoscaling_config"] = {"min_replicas": low, "initial_replicas": max(low, 1), "max_replicas": high,
                                         "target_ongoing_requests": spec.max_batch}
    return options


class ReplicaHeader:
    """ASGI middleware: adds the replica's id to every response's headers (streams pass through untouched)."""

    def __init__(self, app, value: str):
        self.app = app
        self.header = (REPLICA_HEADER.encode(), value.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_named(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_named)


class Replica:
    """One replica: the models loaded once, then the plain server's app built around them.

    Decorated into a deployment only in ``start``: Ray pickles the wrapper it makes by value, and
    this class, kept importable under its own name, travels by reference (its module's globals,
    such as the KV budget's lock, stay on each node).
    """

    def __init__(self, spec: ReplicaSpec):
        self.spec = spec
        self.id = f"{serve.get_replica_context().replica_id.unique_id} pid {os.getpid()}"
        awqinfer.set_kv_budget(self.kv_budget())
        self.models = Models(spec.device, spec.threads, spec.keep_models, spec.max_batch, spec.max_queue,
                             spec.lora_dir)
        for name in spec.models:
            self.models.preload(name)  # a failure fails the replica; Ray's log and `serve status` say why

    def kv_budget(self) -> int:
        """Bytes of KV cache: --kv-budget, else half the memory reserved for the replica, else its CPU
        share of the default."""
        if self.spec.kv_budget is not None:
            return self.spec.kv_budget
        if self.spec.memory is not None:
            return int(self.spec.memory * REPLICA_KV_SHARE)
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        _, default = awqinfer.kv_cache_usage()  # the process's default budget: a share of the memory available
        return max(1, int(default * min(1.0, cpus / len(os.sched_getaffinity(0)))))

    def __serve_build_asgi_app__(self):
        app = create_app(self.models, api_key=self.spec.api_key, seed=self.spec.seed)
        app.add_middleware(ReplicaHeader, value=self.id)
        return app


def start(spec: ReplicaSpec, scaling: Scaling, host: str, port: int, address: str | None = None,
          ray_options: dict | None = None) -> str:
    """Start Ray (a local instance, or join ``address``), then the replicas behind Ray's proxy; -> the URL.

    Returns once every replica has loaded its models. ``ray_options``: more keywords for ray.init.
    """
    ray.init(address=address, include_dashboard=False, configure_logging=False, **(ray_options or {}))
    serve.start(http_options={"host": host, "port": port})
    deployment = serve.deployment(serve.ingress()(Replica), name=APP_NAME, **deployment_options(spec, scaling))
    serve.run(deployment.bind(spec), name=APP_NAME, route_prefix="/")
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def stop(joined: bool) -> None:
    """Take the application down: on a cluster we joined only our application, on our own instance all of Ray."""
    if joined:
        serve.delete(APP_NAME)
    else:
        serve.shutdown()
    ray.shutdown()


def serve_until_signal(spec: ReplicaSpec, scaling: Scaling, host: str, port: int, address: str | None) -> None:
    """``awqinfer serve --ray``: start, print the URL, serve until SIGINT or SIGTERM, then stop (exit status 0)."""
    try:
        url = start(spec, scaling, host, port, address)
        stopping = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, whose own SIGTERM handler exits with 15
            signal.signal(sig, lambda *_: stopping.set())
        count = (f"{scaling.autoscale[0]}..{scaling.autoscale[1]} replicas (autoscaled)" if scaling.autoscale
                 else f"{scaling.replicas} replica{'s' * (scaling.replicas != 1)}")
        print(f"awqinfer: serving on {url} (playground: {url}/) with Ray Serve, {count}, each {scaling.cpus:g} "
              f"CPU and {spec.threads} thread{'s' * (spec.threads != 1)}", file=sys.stderr, flush=True)
        stopping.wait()
        print("awqinfer: stopping the replicas", file=sys.stderr, flush=True)
    finally:
        if ray.is_initialized():
            stop(joined=address is not None)
