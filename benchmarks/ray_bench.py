"""Aggregate tokens/s under concurrent load: ``awqinfer serve`` beside ``awqinfer serve --ray`` with 1 and 2 replicas.

    python -m benchmarks.ray_bench                       # needs awqinfer[ray]
    python -m benchmarks.ray_bench --requests 32 --concurrency 8 --max-tokens 64

For the default model, each server gets the same ``--requests`` chat requests (temperature 0.7,
seeds 1..N, so every server generates the same tokens), ``--concurrency`` at a time, not
streamed; the figure is the completion tokens of all of them over the wall time from the first
request sent to the last answer. The servers share this machine's cores: the plain server and
the one Ray replica get all of them (threads = cores), two replicas one half each
(``--replica-cpus cores/2``). Each server is warmed up first (kernels loaded, every replica
asked), then measured ``--repeats`` times; runs are median (min-max), and the load average is
recorded. It writes its section of benchmarks/RESULTS.md ("Ray Serve") and ray_results.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from .http_bench import Served
from .sections import publish

HERE = Path(__file__).resolve().parent
MESSAGES = [{"role": "user", "content": "Tell me a long story about a dragon who learns to paint."}]


def load_run(url: str, n: int, concurrency: int, max_tokens: int) -> tuple[int, float]:
    """Send ``n`` requests, ``concurrency`` at a time; -> (completion tokens in all, seconds)."""
    def one(seed: int) -> int:
        body = {"messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0.7, "seed": seed}
        response = requests.post(url + "/ai/run/smollm2-135m-instruct", json=body, timeout=600)
        response.raise_for_status()
        return response.json()["result"]["usage"]["completion_tokens"]

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(one, range(1, n + 1)))
    return tokens, time.perf_counter() - start


def servers(cores: int, concurrency: int) -> list[tuple[str, list[str]]]:
    """(name, the serve flags) of each server measured."""
    common = ["--no-access-log", "--max-batch", str(concurrency)]
    half = max(cores / 2, 0.01)
    return [(f"awqinfer serve, {cores} threads", ["--threads", str(cores), *common]),
            (f"Ray Serve, 1 replica x {cores} CPUs", ["--ray", "--replicas", "1", "--replica-cpus", str(cores), *common]),
            (f"Ray Serve, 2 replicas x {half:g} CPU", ["--ray", "--replicas", "2", "--replica-cpus", str(half), *common])]


def measure(name: str, flags: list[str], args) -> list[float]:
    server = Served(name, [sys.executable, "-m", "awqinfer", "serve", "--port", "0", *flags], r"serving on (http://\S+) ")
    try:
        load_run(server.url, 2 * args.concurrency, args.concurrency, 8)  # warm-up: every replica answers
        runs = []
        for _ in range(args.repeats):
            tokens, seconds = load_run(server.url, args.requests, args.concurrency, args.max_tokens)
            runs.append(tokens / seconds)
            print(f"{name}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tokens/s", flush=True)
        return runs
    finally:
        server.close()


def report(out: dict) -> str:
    med = {name: statistics.median(runs) for name, runs in out["runs"].items()}
    names = list(med)
    rows = ["| server | aggregate tokens/s | vs the plain server |", "| --- | --- | --- |"]
    for name in names:
        runs = out["runs"][name]
        rows.append(f"| {name} | {med[name]:.1f} ({min(runs):.1f}-{max(runs):.1f}) | "
                    f"{med[name] / med[names[0]]:.2f}x |")
    one, two = med[names[1]], med[names[2]]
    head = (f"Run {out['date']}: {out['requests']} chat requests of up to {out['max_tokens']} tokens, "
            f"{out['concurrency']} at a time, not streamed, the default model, on this {out['cores']}-core machine; "
            f"{out['repeats']} runs each; load average before / after: {out['load_before']} / {out['load_after']}. "
            f"Command: `python -m benchmarks.ray_bench {' '.join(out['argv'])}`.")
    ratio, plain = two / one, two / med[names[0]]
    verdict = ("about even, as expected: one replica already batches the concurrent requests on every core, and a "
               "second only splits the same cores" if abs(ratio - 1) < 0.1 else
               f"although no more cores were added; two replicas reach {plain:.2f}x the plain server, so the cores "
               "serve two one-thread processes as well as one two-thread process, and what differs is how Ray's proxy "
               "shares the cores with them (not measured further)" if ratio > 1 else
               "a loss: a second copy of the weights and a second process compete for the same cores")
    notes = [f"Two replicas against one on the same {out['cores']} cores: {ratio:.2f}x, {verdict}.",
             f"Ray's proxy against the plain server: {one / med[names[0]]:.2f}x; the proxy and Ray's controller "
             "share the cores with the replica here.",
             f"Paper estimate for N machines of this kind, one replica each (--replica-cpus = the cores, Ray's "
             f"proxy on every node): about N x {one:.0f} tokens/s, i.e. {2 * one:.0f} for 2, {4 * one:.0f} for 4, "
             f"{8 * one:.0f} for 8, as long as clients spread over the nodes' proxies (or a load balancer does) and "
             "each node has the concurrent requests to fill its batch. Replicas do not share KV caches or "
             "batches, so a single stream is no faster than on one machine."]
    return "\n".join(["## Ray Serve: aggregate tokens/s with 1 and 2 replicas", "", head, "", *rows, "",
                      *[f"- {n}" for n in notes]])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ray_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=24)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(HERE), help="directory of RESULTS.md and ray_results.json")
    args = p.parse_args(argv)
    from awqinfer.engine.hub import default_model_dir
    from awqinfer.engine.model.threads import available_cores

    default_model_dir()  # build it once, before anything is timed
    cores = available_cores()
    out = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "requests": args.requests, "concurrency": args.concurrency,
           "max_tokens": args.max_tokens, "repeats": args.repeats, "cores": cores,
           "argv": list(argv if argv is not None else sys.argv[1:]),
           "load_before": ", ".join(f"{x:.1f}" for x in os.getloadavg()), "runs": {}}
    for name, flags in servers(cores, args.concurrency):
        out["runs"][name] = measure(name, flags, args)
    out["load_after"] = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    publish(Path(args.out), "ray_bench", "ray_results.json", out, report(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
