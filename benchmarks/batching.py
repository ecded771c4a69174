"""Many streams at once, and long contexts: what continuous batching and 16-bit KV caches buy.

    python -m benchmarks.batching                  # the default model, 1-16 streams, 1k/2k/4k contexts
    python -m benchmarks.batching --streams 1,4 --contexts 1024 --tokens 32

Two measurements, written to benchmarks/batching.json (report.py renders them into RESULTS.md):

* streams: N threads call ``LLM.run(stream=True)`` at the same moment (a raw prose prompt of
  ``--prompt-tokens``, sampled with a seed per stream, up to ``--tokens`` new tokens), so the scheduler
  steps them together. Per stream: seconds to the first chunk and decode tokens/s after it; the
  aggregate is the sum of the streams' decode rates (they overlap). Beside it, llama.cpp's
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


def one_stream(llm, prompt: str, seed: int, tokens: int, start: threading.Barrier, out: list) -> None:
    """Run one streamed request after the barrier; append (first-chunk s, decode tokens/s, tokens)."""
    start.wait()
    t0 = time.perf_counter()
    first = last = None
    usage = {}
    for chunk in llm.run({"prompt": prompt, "raw": True, "stream": True, "max_tokens": tokens,
                          "temperature": 0.8, "seed": seed + 1}):
        now = time.perf_counter()
        if chunk.get("response"):
            first = first if first is not None else now
            last = now
        usage = chunk.get("usage") or usage
    n = usage.get("completion_tokens", 0)
    rate = (n - 1) / (last - first) if first is not None and last > first and n > 1 else float("nan")
    out.append((first - t0 if first is not None else float("nan"), rate, n))


def streams(llm, counts: list[int], prompt_tokens: int, tokens: int, log) -> dict:
    """Aggregate decode tokens/s and mean seconds to first chunk for each number of concurrent streams."""
    prompt = llm.tokenizer.decode(prompt_ids(llm.tokenizer, prompt_tokens, llm.model.config.vocab_size))
    one_stream(llm, prompt, 0, 8, threading.Barrier(1), [])  # warm: compile, load caches
    res = {}
    for n in counts:
        out: list = []
        start = threading.Barrier(n)
        threads = [threading.Thread(target=one_stream, args=(llm, prompt, s, tokens, start, out)) for s in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        firsts, rates, made = zip(*out)
        res[n] = {"aggregate": float(np.nansum(rates)), "per_stream": float(np.nanmean(rates)),
                  "first_chunk_s": float(np.mean(firsts)), "tokens": float(np.mean(made))}
        log(f"  {n:2d} streams: {res[n]['aggregate']:.1f} tok/s aggregate, first chunk {res[n]['first_chunk_s']:.2f} s")
    return res


def kv_dtypes(directory: Path, contexts: list[int], steps: int, log) -> dict:
    """Decode tokens/s after each context length, for float16 and float32 KV caches."""
    from awqinfer.engine.checkpoint.config import ModelConfig
    from awqinfer.engine.model import Model
    from awqinfer.engine.text.tokenizer import Tokenizer

    ids = prompt_ids(Tokenizer(directory), max(contexts), ModelConfig.load(directory).vocab_size)
    res = {}
    for kv in ("float16", "float32"):
        model = Model.load(directory, kv_dtype=kv)
        cache = model.new_cache(max(contexts) + steps * len(contexts) + 1)
        for ctx in contexts:
            model.forward(ids[cache.pos:ctx], cache, last_only=True)
            token = [int(ids[0])]
            model.forward(token, cache)  # warm at this length
            t = time.perf_counter()
            for _ in range(steps):
                model.forward(token, cache)
            res.setdefault(kv, {})[ctx] = steps / (time.perf_counter() - t)
            log(f"  {kv} KV after {ctx} tokens: {res[kv][ctx]:.1f} tok/s")
        cache.close()
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.batching", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint directory (default: the default model; peers only then)")
    p.add_argument("--streams", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8, 16])
    p.add_argument("--prompt-tokens", type=int, default=128, help="prompt length of each stream, in tokens")
    p.add_argument("--tokens", type=int, default=64, help="new tokens per stream")
    p.add_argument("--contexts", type=lambda s: [int(x) for x in s.split(",")], default=[1024, 2048, 4096])
    p.add_argument("--long-tokens", type=int, default=16, help="decode steps timed at each context")
    p.add_argument("--no-peers", action="store_true", help="skip llama-batched-bench")
    p.add_argument("--out", default=str(HERE / "batching.json"))
    args = p.parse_args(argv)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)

    import awqinfer
    from awqinfer.engine.hub import default_gguf, default_model_dir

    out = {"load_average_before": os.getloadavg(), "args": vars(args)}
    log("concurrent streams (awqinfer, in process) ...")
    llm = awqinfer.load(args.model, max_batch=max(args.streams))
    out["streams"] = streams(llm, args.streams, args.prompt_tokens, args.tokens, log)
    if not args.no_peers and not args.model:
        log("llama-batched-bench ...")
        out["llama_batched"] = llama_tools.batched_bench(default_gguf(), 2, tuple(args.streams))
    log("KV dtype at long context ...")
    directory = Path(args.model) if args.model else default_model_dir()
    out["kv"] = kv_dtypes(directory, args.contexts, args.long_tokens, log)
    out["load_average_after"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
