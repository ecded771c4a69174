"""One engine in its own process, driven by run.py over stdin/stdout (one JSON object a line).

Each engine's thread pool (Numba's OpenMP threads, llama.cpp's, torch's) spins for a while
after its work; in one process they steal the cores from each other (docs/PERFORMANCE.md item 7). Here
an idle engine sits blocked on stdin and its threads fall asleep before the next one runs.

    python -m benchmarks.worker awqinfer DIR [int8|f32] [THREADS|auto] | llama-cpp-python GGUF N_CTX THREADS
                                | torch GGUF THREADS
    requests: {"op": "prefill", "ids": [...]}, {"op": "greedy", "ids": [...], "n": N},
              {"op": "fill", "ids": [...], "extra": N}, {"op": "decode_at", "ctx": C, "n": N},
              {"op": "stream", "ids": [...], "n": N}   (awqinfer, llama-cpp-python: the streamed API),
              {"op": "check", "ids": [...], "n": N}   (awqinfer: fast vs reference greedy tokens)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def make(argv):
    from .engines import Awqinfer, LlamaCppPython, Torch

    kind = argv[0]
    if kind == "awqinfer":
        from awqinfer.engine.llm import LLM

        head = argv[2] if len(argv) > 2 else "int8"
        threads = argv[3] if len(argv) > 3 else "auto"
        llm = LLM.from_directory(argv[1], threads=None if threads == "auto" else int(threads))
        llm.model.fast_lm_head_int8 = head == "int8"
        engine = Awqinfer(llm)
        engine.name = "awqinfer" + ("" if head == "int8" else " f32-head") + ("" if threads == "auto" else f" {threads}t")
        return engine
    if kind == "llama-cpp-python":
        return LlamaCppPython(Path(argv[1]), int(argv[2]), int(argv[3]))
    if kind == "torch":
        return Torch(Path(argv[1]), int(argv[2]))
    raise SystemExit(f"unknown engine {kind!r}")


def serve(engine, requests, reply):
    from .engines import Awqinfer

    for line in requests:
        req = json.loads(line)
        op = req["op"]
        if op == "prefill":
            out = {"seconds": engine.prefill(req["ids"])}
        elif op == "greedy":
            tokens, seconds = engine.greedy(req["ids"], req["n"])
            out = {"tokens": tokens, "seconds": seconds}
        elif op == "fill":
            engine.fill(req["ids"], req["extra"])
            out = {}
        elif op == "decode_at":
            out = {"seconds": engine.decode_at(req["ctx"], req["n"])}
        elif op == "stream":
            out = engine.stream(req["ids"], req["n"])
        elif op == "check":
            fast, _ = Awqinfer(engine.llm, fast=True).greedy(req["ids"], req["n"])
            ref, _ = Awqinfer(engine.llm, fast=False).greedy(req["ids"], req["n"])
            out = {"fast": fast, "reference": ref}
        else:
            out = {"error": f"unknown op {op!r}"}
        reply.write(json.dumps(out) + "\n")
        reply.flush()


if __name__ == "__main__":
    t = time.perf_counter()
    try:
        engine = make(sys.argv[1:])
    except ImportError as e:
        print(json.dumps({"unavailable": str(e)}), flush=True)
        raise SystemExit(0)
    print(json.dumps({"ready": engine.name, "load_s": time.perf_counter() - t}), flush=True)
    serve(engine, sys.stdin, sys.stdout)
