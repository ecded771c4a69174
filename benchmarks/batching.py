"""Many streams at once, and long contexts: what continuous batching and 16-bit KV caches buy.

    python -m benchmarks.batching                  # the default model, 1-16 streams, 1k/2k/4k contexts
    python -m benchmarks.batching --streams 1,4 --contexts 1024 --tokens 32

Two measurements, written to benchmarks/batching.json and .png (report.py renders them into RESULTS.md):

* streams: N threads call ``LLM.run(stream=True)`` at the same moment (a raw prose prompt of
  ``--prompt-tokens``, greedy, up to ``--tokens`` new tokens), so the scheduler steps them
  together. Per stream: seconds to the first chunk and decode tokens/s after it; the aggregate
  counts the chunks of all streams while every one of them was decoding (``all_decoding``: the
  prompts' prefill, a chunk a step between the decode steps, drags the early streams' own rates
  down, and llama-batched-bench leaves prompts out of its decode figure too). Then a newcomer's seconds to its first
  chunk alone and while 8 streams decode (chunked prefill interleaved with their steps). Beside it, llama.cpp's
  ``llama-batched-bench`` on the same GGUF (its own loop, 128 prompt + 128 new tokens a stream).
* KV dtype: ``Model.forward`` decode tokens/s with float16 against float32 KV caches after
  1k, 2k and 4k tokens of context, the same prompt, timed over ``--long-tokens`` steps.

Both are noisy on a shared machine: the load average before and after is recorded; hold the
CPU lock (``flock /tmp/awqinfer-cpu.lock python -m benchmarks.batching``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from . import llama_tools
from .measure import HERE, prompt_ids
from .report import plot_streams


def one_stream(llm, prompt: str, tokens: int, out: list, start: threading.Barrier | None = None,
               on_first=lambda: None) -> None:
    """Run one greedy streamed request (after ``start``); append (first-chunk s, decode tokens/s, tokens, the
    perf_counter times of its chunks with text)."""
    if start is not None:
        start.wait()
    t0 = time.perf_counter()
    times = []
    usage = {}
    for chunk in llm.run({"prompt": prompt, "raw": True, "stream": True, "max_tokens": tokens, "temperature": 0}):
        if chunk.get("response"):
            times.append(time.perf_counter())
            if len(times) == 1:
                on_first()
        usage = chunk.get("usage") or usage
    n = usage.get("completion_tokens", 0)
    rate = (n - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] and n > 1 else float("nan")
    out.append((times[0] - t0 if times else float("nan"), rate, n, times))


def all_decoding(times: list[list[float]]) -> float:
    """Chunks per second that all the streams got while every one of them was decoding: from the last
    stream's first chunk to the first stream's last. The prompts' prefill (one chunk a step, between
    the decode steps) is outside it, as it is outside llama-batched-bench's decode figure."""
    start, end = max(t[0] for t in times), min(t[-1] for t in times)
    if end <= start:
        return float("nan")
    return sum(start < x <= end for t in times for x in t) / (end - start)


def concurrently(n: int, target, *args, **kwargs) -> list[threading.Thread]:
    """n started threads running target(*args, **kwargs)."""
    threads = [threading.Thread(target=target, args=args, kwargs=kwargs) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def streams(llm, counts: list[int], prompt: str, tokens: int, log) -> dict:
    """Aggregate decode tokens/s and mean seconds to first chunk for each number of concurrent streams."""
    res = {}
    for n in counts:
        out: list = []
        for t in concurrently(n, one_stream, llm, prompt, tokens, out, threading.Barrier(n)):
            t.join()
        firsts, rates, made, times = zip(*out)
        res[n] = {"aggregate": all_decoding(times), "per_stream": float(np.nanmean(rates)),
                  "first_chunk_s": float(np.mean(firsts)), "tokens": float(np.mean(made))}
        log(f"  {n:2d} streams: {res[n]['aggregate']:.1f} tok/s aggregate, first chunk {res[n]['first_chunk_s']:.2f} s")
    return res


def newcomer(llm, prompt: str, tokens: int, running: int, log) -> dict:
    """Seconds to a new request's first chunk alone, and while ``running`` streams are decoding."""
    alone: list = []
    one_stream(llm, prompt, 8, alone)
    decoding = threading.Semaphore(0)
    busy: list = []
    threads = concurrently(running, one_stream, llm, prompt, tokens, busy, on_first=decoding.release)
    for _ in range(running):
        decoding.acquire()
    beside: list = []
    one_stream(llm, prompt, 8, beside)
    for t in threads:
        t.join()
    res = {"alone_s": alone[0][0], "beside_s": beside[0][0], "running": running}
    log(f"  newcomer's first chunk: alone {res['alone_s']:.2f} s, beside {running} streams {res['beside_s']:.2f} s")
    return res


def kv_dtypes(directory: Path, contexts: list[int], steps: int, repeats: int, log) -> dict:
    """Decode tokens/s after each context length for float16 and float32 KV caches: the median of
    ``repeats`` timings of ``steps`` steps, the two dtypes taking turns."""
    from awqinfer.engine.checkpoint.config import ModelConfig
    from awqinfer.engine.model import Model
    from awqinfer.engine.text.tokenizer import Tokenizer

    contexts = sorted(contexts)
    ids = prompt_ids(Tokenizer(directory), max(contexts), ModelConfig.load(directory).vocab_size)
    models = {kv: Model.load(directory, kv_dtype=kv) for kv in ("float16", "float32")}
    caches = {kv: m.new_cache(max(contexts) + (repeats * steps + 1) * len(contexts)) for kv, m in models.items()}
    res: dict = {kv: {} for kv in models}
    for ctx in contexts:
        times: dict = {kv: [] for kv in models}
        for kv, m in models.items():
            m.forward(ids[caches[kv].pos:ctx], caches[kv], last_only=True)  # contexts grow: the cache catches up
            m.forward([int(ids[0])], caches[kv])  # warm at this length
        for _ in range(repeats):
            for kv, m in models.items():
                t = time.perf_counter()
                for _ in range(steps):
                    m.forward([int(ids[0])], caches[kv])
                times[kv].append(steps / (time.perf_counter() - t))
        for kv in models:
            res[kv][ctx] = float(np.median(times[kv]))
            log(f"  {kv} KV after {ctx} tokens: {res[kv][ctx]:.1f} tok/s ({min(times[kv]):.1f}-{max(times[kv]):.1f})")
    for cache in caches.values():
        cache.close()
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.batching", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint directory (default: the default model; peers only then)")
    p.add_argument("--streams", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8, 16])
    p.add_argument("--prompt-tokens", type=int, default=128, help="prompt length of each stream, in tokens")
    p.add_argument("--tokens", type=int, default=128, help="new tokens per stream")
    p.add_argument("--contexts", type=lambda s: [int(x) for x in s.split(",")], default=[1024, 2048, 4096])
    p.add_argument("--long-tokens", type=int, default=32, help="decode steps timed at each context")
    p.add_argument("--repeats", type=int, default=3, help="timings at each context, the dtypes taking turns")
    p.add_argument("--no-streams", action="store_true", help="only the KV dtype comparison (streams kept from --out)")
    p.add_argument("--no-peers", action="store_true", help="skip llama-batched-bench")
    p.add_argument("--out", default=str(HERE / "batching.json"))
    args = p.parse_args(argv)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)

    import awqinfer
    from awqinfer.engine.hub import default_gguf, default_model_dir

    earlier = Path(args.out)
    out = json.loads(earlier.read_text()) if args.no_streams and earlier.exists() else {}  # keep its streams
    out["args"] = vars(args)
    if not args.no_streams:
        out["load_average_before"] = os.getloadavg()
        log("concurrent streams (awqinfer, in process) ...")
        llm = awqinfer.load(args.model, max_batch=max(args.streams))
        prompt = llm.tokenizer.decode(prompt_ids(llm.tokenizer, args.prompt_tokens, llm.model.config.vocab_size))
        one_stream(llm, prompt, 8, [])  # warm: compile, load caches
        out["streams"] = streams(llm, args.streams, prompt, args.tokens, log)
        out["newcomer"] = newcomer(llm, prompt, args.tokens, min(8, max(args.streams)), log)
        if not args.no_peers and not args.model:
            log("llama-batched-bench ...")
            out["llama_batched"] = llama_tools.batched_bench(default_gguf(), 2, tuple(args.streams))
        out["load_average_after"] = os.getloadavg()
    log("KV dtype at long context ...")
    directory = Path(args.model) if args.model else default_model_dir()
    before = os.getloadavg()
    out["kv"] = kv_dtypes(directory, args.contexts, args.long_tokens, args.repeats, log)
    out["kv_load_average"] = [before, os.getloadavg()]
    Path(args.out).write_text(json.dumps(out, indent=1))
    if "streams" in out:
        plot_streams(out, Path(args.out).with_suffix(".png"))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
