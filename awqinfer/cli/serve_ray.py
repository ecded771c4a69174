"""``awqinfer serve --ray``: the serve flags for Ray Serve replicas, and the command that starts them.

    awqinfer serve --ray --replicas 2                 two replicas behind Ray's proxy on this machine
    awqinfer serve --ray --autoscale 1:8 --address HEAD:6379 --host 0.0.0.0
                                                      join a cluster (`ray start --head` / `--address`)

Ray is imported only when --ray is given (it is the optional extra ``awqinfer[ray]``), so
``awqinfer serve`` and every other command start without it.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import sys
from pathlib import Path

from awqinfer.engine.model.threads import available_cores

from .common import EXIT_ERROR, EXIT_USAGE, fail, ranged


def autoscale_range(text: str) -> tuple[int, int]:
    """'MIN:MAX' -> (min, max): 0 <= min <= max, max >= 1."""
    low, sep, high = text.partition(":")
    try:
        bounds = (int(low), int(high)) if sep else None
    except ValueError:
        bounds = None
    if bounds is None or not 0 <= bounds[0] <= bounds[1] or bounds[1] < 1:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX replicas with 0 <= MIN <= MAX and MAX >= 1, got {text!r}")
    return bounds


def memory_size(text: str) -> int:
    """'4GB', '512MiB' or a number of bytes -> bytes."""
    from awqinfer.engine.model.kv_budget import parse_bytes
    from awqinfer.errors import InputError
    try:
        return parse_bytes(text)
    except InputError:
        raise argparse.ArgumentTypeError(f"expected a size such as 4GB, 512MiB or a number of bytes, got {text!r}")


def add_ray_flags(p: argparse.ArgumentParser) -> None:
    """--ray and its companions, in a group of their own in --help."""
    g = p.add_argument_group("Ray Serve (needs `pip install 'awqinfer[ray]'`)")
    g.add_argument("--ray", action="store_true",
                   help="serve through Ray Serve: the same API from one or more replicas, each loading the models "
                        "once and batching its own requests; --host/--port are Ray's HTTP proxy")
    count = g.add_mutually_exclusive_group()
    count.add_argument("--replicas", type=ranged(int, 1, None), default=1, metavar="N",
                       help="replicas to run (default: 1)")
    count.add_argument("--autoscale", type=autoscale_range, default=None, metavar="MIN:MAX",
                       help="let Ray Serve add replicas while requests per replica (running + queued) exceed "
                            "--max-batch, and remove them when idle, between MIN and MAX")
    g.add_argument("--address", default=None, metavar="ADDR",
                   help="join this Ray cluster (HOST:6379 of `ray start --head`, or 'auto'); default: start a "
                        "Ray instance on this machine, stopped on exit")
    g.add_argument("--replica-cpus", type=ranged(float, 0.01, None), default=None, metavar="X",
                   help="Ray CPUs each replica reserves; it runs its kernels on max(1, floor(X)) threads unless "
                        "--threads says otherwise (default: this machine's cores / the most replicas)")
    g.add_argument("--replica-memory", type=memory_size, default=None, metavar="SIZE",
                   help="memory each replica reserves from Ray (e.g. 4GB); half of it is the replica's KV budget "
                        "unless --kv-budget gives one (per replica) (default: none reserved; the KV budget is the "
                        "replica's CPU share of half this machine's available memory)")


def _ray_only(args) -> list[str]:
    """The Ray-only flags given (--replicas only when not 1, its default)."""
    return [flag for flag, value in (("--replicas", args.replicas != 1 or None), ("--autoscale", args.autoscale),
                                     ("--address", args.address), ("--replica-cpus", args.replica_cpus),
                                     ("--replica-memory", args.replica_memory)) if value is not None]


def wanted(args) -> bool:
    """Whether this ``awqinfer serve`` is for Ray: --ray, or a flag only --ray uses (then main says it needs --ray)."""
    return args.ray or bool(_ray_only(args))


def main(args, key: str | None) -> int:
    """Start the replicas (``args`` from serve's parser, ``key`` the API key resolved) and serve until a signal."""
    if not args.ray:
        return fail(f"{_ray_only(args)[0]} needs --ray", EXIT_USAGE)
    try:
        from awqinfer.server import ray_app
    except ImportError as e:
        return fail(f"--ray needs Ray Serve ({e}); install it with: pip install 'awqinfer[ray]'", EXIT_ERROR)
    most = args.autoscale[1] if args.autoscale else args.replicas
    cpus = args.replica_cpus or max(0.01, int(available_cores() / most * 100) / 100)
    spec = ray_app.ReplicaSpec(models=tuple(args.model or [None]), device=args.device,
                               threads=args.threads or ray_app.replica_threads(cpus), keep_models=args.keep_models,
                               max_batch=args.max_batch, max_queue=args.max_queue, api_key=key,
                               memory=args.replica_memory, kv_budget=args.kv_budget, lora_dir=args.lora_dir,
                               seed=args.seed)
    scaling = ray_app.Scaling(replicas=args.replicas, autoscale=args.autoscale, cpus=cpus,
                              shutdown_timeout=args.shutdown_timeout)
    if key is None and not _loopback(args.host):
        print(f"awqinfer: warning: Ray's proxy listens on {args.host} without --api-key: anyone who can reach "
              "it can use the models", file=sys.stderr)
    port = args.port or proxy_port(args.host)
    try:
        ray_app.serve_until_signal(spec, scaling, args.host, port, args.address)
    except (ConnectionError, RuntimeError) as e:  # no cluster at --address; replicas that failed to start
        return fail(f"Ray Serve: {e}", EXIT_ERROR)
    return 0


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


# Ray's worker processes take ports 10002-19999 (ray start's --min/--max-worker-port defaults).
RAY_WORKER_PORTS_END = 20000


def proxy_port(host: str) -> int:
    """A port nothing listens on now, between Ray's worker ports and the kernel's ephemeral range.

    Ray's proxy binds the port itself, after ray.init has started Ray's processes. Those draw ports
    from the ephemeral range (their own port-0 binds, and the local end of every connection they
    open), so a port picked there could be taken before the proxy bound it: CI once failed with
    'Address already in use' that way. Below the ephemeral range only a listener binds a port by
    its number. Falls back to any free port where that band is empty.
    """
    from awqinfer.server.run import listen
    band = range(RAY_WORKER_PORTS_END, ephemeral_ports().start)
    for port in random.sample(band, min(len(band), 64)):
        try:
            with listen(host, port):
                return port
        except OSError:
            continue
    with listen(host, 0) as sock:
        return sock.getsockname()[1]


def ephemeral_ports() -> range:
    """The ports the kernel hands out for bind(0) and outgoing connections (Linux's default elsewhere)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)
