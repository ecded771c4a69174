"""Streamed requests three ways: LLM.run in-process, through ``awqinfer serve``, through llama.cpp's llama-server.

    python -m benchmarks.http_bench                  # llama-server: $LLAMA_SERVER, else llama_tools' build
    python -m benchmarks.http_bench --llama-server /path/to/llama-server --repeats 5 --clients 1,2,4,8

What it measures, for the default model (SmolLM2-135M-Instruct: awqinfer's AWQ 4-bit build, and
for llama-server the GGUF it is built from): the time to first token (from sending the request,
or calling ``run``, to the first text) and the decode speed ((tokens - 1) / (last text - first
text)) of one greedy chat request, streamed. awqinfer in-process against awqinfer over HTTP is
the server's overhead; awqinfer over HTTP against llama-server is the two servers side by side.
Every engine uses --threads threads; they take turns inside each repeat (rotating order), each
figure is a median with min-max, and the load average is recorded. llama-server is asked to
ignore EOS; awqinfer's token counts are reported, as it stops at EOS.

Then, for each count N of ``--clients``, N streaming clients send the same request at once:
to awqinfer serve (one server, its scheduler batching them), to LLM.run from N threads (the
same scheduler, no HTTP), and to ``llama-server -np N`` (N slots, restarted for each N), in
``--repeats`` rounds (rotating order). Per engine and N, medians of: aggregate decode tokens/s (the tokens after each client's first, summed, over
the time from the first client's first token to the last client's last) and the mean time to
first token (prefill and queueing included).

The results go to the terminal, to http_results.json, and into benchmarks/RESULTS.md between
the markers of its "awqinfer serve" section (benchmarks/sections.py: the other scripts' sections
and the hand-written notes stay as they are).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from .sections import publish

HERE = Path(__file__).resolve().parent
MESSAGES = [{"role": "system", "content": "You are a friendly assistant"},
            {"role": "user", "content": "Tell me a long story about a dragon who learns to paint."}]


def stream_times(lines, text_of) -> tuple[float | None, float | None, int]:
    """(time of the first text, time of the last, texts seen) over an iterator of SSE lines."""
    first = last = None
    n = 0
    for line in lines:
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        if text_of(json.loads(line[6:])):
            now = time.perf_counter()
            first = first or now
            last, n = now, n + 1
    return first, last, n


class InProcess:
    name = "awqinfer in-process"

    def __init__(self, threads: int):
        import awqinfer

        self.llm = awqinfer.load(threads=threads)

    def request(self, max_tokens: int) -> dict:
        start = time.perf_counter()
        first = last = None
        usage = None
        for chunk in self.llm.run({"messages": MESSAGES, "stream": True, "max_tokens": max_tokens, "temperature": 0}):
            if chunk["response"]:
                last = time.perf_counter()
                first = first or last
            usage = chunk.get("usage", usage)
        return figures(start, first, last, usage["completion_tokens"])

    def close(self):
        pass


class Served:
    """A server subprocess answering one streamed request at a time."""

    def __init__(self, name: str, argv: list[str], url_pattern: str | None = None, port: int | None = None):
        self.name = name
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"http_bench-{os.getpid()}-{len(name)}.log", "w+")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=HERE.parent)
        self.url = f"http://127.0.0.1:{port}" if port else None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {Path(self.log.name).read_text()[-2000:]}")
            if self.url is None:
                found = re.search(url_pattern, Path(self.log.name).read_text())
                self.url = found.group(1) if found else None
            if self.url:
                try:
                    if requests.get(self.url + "/health", timeout=2).status_code == 200:
                        return
                except requests.ConnectionError:
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not start")

    def close(self):
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()


class AwqinferServe(Served):
    def __init__(self, threads: int):
        super().__init__("awqinfer serve", [sys.executable, "-m", "awqinfer", "serve", "--port", "0", "--threads",
                                            str(threads), "--no-access-log"], r"serving on (http://\S+) ")

    def request(self, max_tokens: int) -> dict:
        body = {"messages": MESSAGES, "stream": True, "max_tokens": max_tokens, "temperature": 0}
        start = time.perf_counter()
        usage = {}
        with requests.post(self.url + "/ai/run/smollm2-135m-instruct", json=body, stream=True) as r:
            def text(event):
                usage.update(event.get("usage", {}))
                return event.get("response")
            first, last, _ = stream_times(r.iter_lines(), text)
        return figures(start, first, last, usage["completion_tokens"])


class LlamaServer(Served):
    def __init__(self, binary: str, gguf: Path, threads: int, slots: int = 1):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # -c is shared by the slots: 1024 positions each, far more than one request needs
        super().__init__("llama-server", [binary, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                                          "-t", str(threads), "-tb", str(threads), "-c", str(1024 * slots),
                                          "-np", str(slots)], port=port)

    def request(self, max_tokens: int) -> dict:
        body = {"messages": MESSAGES, "stream": True, "max_tokens": max_tokens, "temperature": 0,
                "ignore_eos": True}
        start = time.perf_counter()
        with requests.post(self.url + "/v1/chat/completions", json=body, stream=True) as r:
            first, last, n = stream_times(r.iter_lines(),
                                          lambda e: e.get("choices") and e["choices"][0]["delta"].get("content"))
        return figures(start, first, last, n)


def figures(start, first, last, tokens) -> dict:
    """One request's figures; ``first``/``last`` (perf_counter) are kept for the concurrent rounds."""
    return {"ttft": first - start, "tok_s": (tokens - 1) / (last - first) if tokens > 1 and last > first else None,
            "tokens": tokens, "first": first, "last": last}


def concurrent(engine, clients: int, max_tokens: int) -> dict:
    """``clients`` requests sent at once to ``engine``: aggregate decode tokens/s and mean time to first token."""
    runs, errors = [None] * clients, []
    go = threading.Barrier(clients)

    def client(i):
        try:
            go.wait()
            runs[i] = engine.request(max_tokens)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{engine.name}, {clients} clients: {errors[0]!r}")
    span = max(r["last"] for r in runs) - min(r["first"] for r in runs)
    decoded = sum(r["tokens"] - 1 for r in runs)
    return {"clients": clients, "agg_tok_s": decoded / span if span > 0 else None,
            "mean_ttft": statistics.mean(r["ttft"] for r in runs), "tokens": sum(r["tokens"] for r in runs)}


def median(values) -> str:
    values = [v for v in values if v is not None]
    return f"{statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g})" if values else "-"


def report(out: dict) -> str:
    names = list(out["engines"])
    rows = ["| | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for key, label in (("ttft", "time to first token, s"), ("tok_s", "decode tokens/s"), ("tokens", "tokens")):
        rows.append(f"| {label} | " + " | ".join(median([r[key] for r in out["engines"][n]]) for n in names) + " |")
    med = {n: {k: statistics.median([r[k] for r in out["engines"][n] if r[k] is not None] or [0])
               for k in ("ttft", "tok_s")} for n in names}
    notes = []
    base, http = "awqinfer in-process", "awqinfer serve"
    if med[base]["tok_s"] and med[http]["tok_s"]:
        notes.append(f"HTTP overhead: time to first token +{(med[http]['ttft'] - med[base]['ttft']) * 1000:.0f} ms, "
                     f"decode {med[http]['tok_s'] / med[base]['tok_s']:.2f}x in-process")
    if "llama-server" in med and med["llama-server"]["tok_s"] and med[http]["tok_s"]:
        notes.append(f"awqinfer serve / llama-server: decode {med[http]['tok_s'] / med['llama-server']['tok_s']:.2f}x, "
                     f"time to first token {med[http]['ttft'] / med['llama-server']['ttft']:.2f}x")
    else:
        notes.append(f"llama-server: not measured ({out.get('llama_server_note', 'binary not found')})")
    rows += ["", f"Concurrent streaming clients ({out['max_tokens']} tokens each), {out['repeats']} rounds: aggregate "
                 "decode tokens/s and mean time to first token, medians (min-max of the tokens/s)", "",
             "| clients | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for n in out["clients"]:
        cells = []
        for name in names:
            got = [r for r in out["concurrent"].get(name, []) if r["clients"] == n]
            rates = [r["agg_tok_s"] for r in got if r["agg_tok_s"]]
            cells.append(f"{statistics.median(rates):.1f} ({min(rates):.0f}-{max(rates):.0f}) tok/s, "
                         f"{statistics.median(r['mean_ttft'] for r in got):.2f} s" if rates else "-")
        rows.append(f"| {n} | " + " | ".join(cells) + " |")
    head = (f"Run {out['date']}: {out['repeats']} repeats of one greedy chat request of up to {out['max_tokens']} "
            f"tokens, streamed; {out['threads']} threads each; load average before / after: "
            f"{out['load_before']} / {out['load_after']}. Command: `python -m benchmarks.http_bench "
            f"{' '.join(out['argv'])}`.")
    return "\n".join(["## awqinfer serve: the HTTP server against in-process and llama-server", "", head, "",
                      *rows, "", *[f"- {n}" for n in notes]])


def restart(server: "LlamaServer", args, slots: int) -> "LlamaServer":
    """llama-server again, with ``slots`` parallel slots (-np), warmed up."""
    from awqinfer.engine.hub import default_gguf

    server.close()
    fresh = LlamaServer(args.llama_server, default_gguf(), args.threads, slots)
    fresh.request(4)
    return fresh


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.http_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER"),
                   help="llama.cpp's llama-server binary (default: $LLAMA_SERVER, else the one llama_tools.py "
                        "builds; '' skips it)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clients", default="1,2,4,8", help="concurrent client counts, comma separated ('' skips them)")
    p.add_argument("--out", default=str(HERE), help="directory of RESULTS.md and http_results.json")
    args = p.parse_args(argv)
    clients = [int(n) for n in args.clients.split(",") if n.strip()]
    if args.llama_server is None:
        from benchmarks.llama_tools import binaries

        args.llama_server = str(binaries() / "llama-server")
    from awqinfer.engine.hub import default_gguf, default_model_dir

    default_model_dir()  # build it once, before anything is timed
    engines = [InProcess(args.threads), AwqinferServe(args.threads)]
    out = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "repeats": args.repeats, "max_tokens": args.max_tokens,
           "threads": args.threads, "clients": clients, "argv": list(argv if argv is not None else sys.argv[1:]),
           "load_before": ", ".join(f"{x:.1f}" for x in os.getloadavg())}
    llama = args.llama_server and Path(args.llama_server).is_file()
    if llama:
        engines.append(LlamaServer(args.llama_server, default_gguf(), args.threads))
    else:
        out["llama_server_note"] = f"no llama-server binary ({args.llama_server or 'none given'})"
    try:
        for engine in engines:
            engine.request(4)  # warm up: kernels compiled, caches touched
        results = {e.name: [] for e in engines}
        for i in range(args.repeats):
            for engine in engines[i % len(engines):] + engines[:i % len(engines)]:
                results[engine.name].append(engine.request(args.max_tokens))
        out["concurrent"] = {e.name: [] for e in engines}
        for i, n in ((i, n) for i in range(args.repeats) for n in clients):
            for engine in engines[i % len(engines):] + engines[:i % len(engines)]:
                if isinstance(engine, LlamaServer):  # -np N: as many slots as clients
                    engines[engines.index(engine)] = engine = restart(engine, args, n)
                out["concurrent"][engine.name].append(concurrent(engine, n, args.max_tokens))
    finally:
        for engine in engines:
            engine.close()
    out["engines"] = results
    out["load_after"] = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    publish(Path(args.out), "http_bench", "http_results.json", out, report(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
