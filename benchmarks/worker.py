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
from concurrent.futures import ThreadPoolExecutor
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


def answer(engine, req: dict) -> dict:
    """One request's reply."""
    from .engines import Awqinfer

    op = req["op"]
    if op == "prefill":
        return {"seconds": engine.prefill(req["ids"])}
    if op == "greedy":
        tokens, seconds = engine.greedy(req["ids"], req["n"])
        return {"tokens": tokens, "seconds": seconds}
    if op == "fill":
        engine.fill(req["ids"], req["extra"])
        return {}
    if op == "decode_at":
        return {"seconds": engine.decode_at(req["ctx"], req["n"])}
    if op == "stream":
        return engine.stream(req["ids"], req["n"])
    if op == "check":
        fast, _ = Awqinfer(engine.llm, fast=True).greedy(req["ids"], req["n"])
        ref, _ = Awqinfer(engine.llm, fast=False).greedy(req["ids"], req["n"])
        return {"fast": fast, "reference": ref}
    return {"error": f"unknown op {op!r}"}


def alone(work, llm):
    """``work()`` in a thread of its own, then wait for ``llm``'s engine thread to end: one OpenMP master at a time.

    Every thread that starts Numba's parallel kernels keeps a pool of OpenMP threads until it
    exits, and once a process holds more pool threads than cores, libgomp makes all of them stop
    spinning between kernels: a decode step from the second thread ran ~1.5x slower
    (docs/PERFORMANCE.md item 19). The raw loops (``Model.forward``) would run on this process's
    main thread and the streamed ones on the scheduler's engine thread; so each request runs in a
    thread that ends with it, and the next starts once the engine thread (idle after a stream) is gone.
    """
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:  # its one thread ends with the block
            return pool.submit(work).result()
    finally:
        while llm.scheduler.engine_running:
            time.sleep(0.05)


def serve(engine, requests, reply):
    from .engines import Awqinfer

    for line in requests:
        req = json.loads(line)
        out = alone(lambda: answer(engine, req), engine.llm) if isinstance(engine, Awqinfer) else answer(engine, req)
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
