"""llama.cpp through its own programs: llama-bench and llama-batched-bench, run as child processes.

The binaries come from benchmarks/build_llama_cpp.sh (the llama.cpp sources vendored in the
llama-cpp-python sdist of the same version as the Python peer, CPU backend, cached by version):
``$LLAMA_CPP_BIN`` if set, else the script's cache (it builds on first use, ~10 minutes on 2 cores).

    llama_bench(gguf, threads, prompts=(128, 512), gen=128, depth=0, repetitions=1) -> {"pp128": [t/s], ...}
    batched_bench(gguf, threads, parallel=(1, 2, 4, 8, 16)) -> {streams: aggregate decode t/s}
    peak_rss(cmd) -> bytes

Each figure is llama.cpp's own timing of its own loop (no Python in between).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from .measure import child

HERE = Path(__file__).resolve().parent


def binaries() -> Path:
    """The folder holding llama-bench and llama-batched-bench (built and cached on first use)."""
    env = os.environ.get("LLAMA_CPP_BIN")
    if env:
        return Path(env)
    out = subprocess.run(["bash", str(HERE / "build_llama_cpp.sh")], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"build_llama_cpp.sh failed: {out.stderr[-2000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def llama_bench(gguf: Path, threads: int, prompts=(128, 512), gen: int = 128, depth: int = 0,
                repetitions: int = 1) -> dict[str, list[float]]:
    """llama-bench's tokens/s per test: 'pp<N>' for each prompt length, 'tg<gen>' (at ``depth`` cached tokens)."""
    cmd = [str(binaries() / "llama-bench"), "-m", str(gguf), "-t", str(threads), "-r", str(repetitions), "-o", "json",
           "-p", ",".join(map(str, prompts)) if prompts else "0", "-n", str(gen), "-d", str(depth)]
    out = child(cmd)[3]
    results = {}
    for test in json.loads(out):
        key = f"pp{test['n_prompt']}" if test["n_gen"] == 0 else f"tg{test['n_gen']}"
        results[key] = [float(x) for x in test.get("samples_ts") or [test["avg_ts"]]]
    return results


def batched_bench(gguf: Path, threads: int, parallel=(1, 2, 4, 8, 16), prompt: int = 128, gen: int = 128) -> dict:
    """llama-batched-bench: aggregate decode tokens/s of ``n`` streams (prompt + gen tokens each) for n in parallel."""
    n_ctx = max(parallel) * (prompt + gen) + 16
    cmd = [str(binaries() / "llama-batched-bench"), "-m", str(gguf), "-t", str(threads), "-tb", str(threads),
           "-c", str(n_ctx), "-b", "2048", "-ub", "512", "-npp", str(prompt), "-ntg", str(gen),
           "-npl", ",".join(map(str, parallel))]
    out = child(cmd)[3]
    rows = {}
    for line in out.splitlines():  # |    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s | ...
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 8 and re.fullmatch(r"\d+", cells[0]):
            rows[int(cells[2])] = float(cells[7])
    return rows


def peak_rss(gguf: Path, threads: int, gen: int = 32) -> int:
    """Peak RSS (bytes) of a llama-bench process generating ``gen`` tokens: llama.cpp's memory for this model."""
    cmd = [str(binaries() / "llama-bench"), "-m", str(gguf), "-t", str(threads), "-r", "1", "-p", "0", "-n", str(gen),
           "-o", "json"]
    return child(cmd)[2]
