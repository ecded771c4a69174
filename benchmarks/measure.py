"""What benchmarks/run.py measures besides the engines: prompts, bandwidth, fresh processes, a busy neighbour.

    prompt_ids / stream_prompt_ids      the token ids every engine gets
    read_bandwidth(gb, repeats)         GB/s of a 2-thread Numba sum (the bound decode lives on)
    time_to_first_token(...)            fresh ``awqinfer run`` processes: first byte, peak RSS
    big_model(dims, ...)                the 7B-shaped checkpoint, written, measured in fresh processes, deleted
    busy_process()                      a context with one process spinning on a core
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import synth

HERE = Path(__file__).resolve().parent
TEXT = (
    "The history of computing is a story of people trying to make machines do arithmetic faster. "
    "Charles Babbage designed an engine of brass gears; Ada Lovelace wrote what many call the first "
    "program for it. A century later, relays and vacuum tubes gave way to transistors, and transistors "
    "to integrated circuits holding billions of them. Today a language model running on a laptop "
    "performs more multiplications in a second than all the human computers of the nineteenth century "
    "did in their lifetimes. Yet the limit is rarely the arithmetic: it is moving the numbers from "
    "memory to the processor. "
)



def prompt_ids(tokenizer, n: int, vocab: int) -> list[int]:
    """n token ids of TEXT repeated (a model without a real tokenizer gets ids modulo its vocabulary)."""
    ids = tokenizer.encode(TEXT * 8)
    while len(ids) < n:
        ids = ids + ids
    return [i % vocab for i in ids[:n]]


def read_bandwidth(gigabytes: float, repeats: int) -> list[float]:
    """GB/s of a 2-thread Numba sum over a ``gigabytes`` array (the read bandwidth decode lives on)."""
    from numba import njit, prange

    @njit(parallel=True, fastmath=True)
    def total(a):
        s = np.float32(0.0)
        for i in prange(a.shape[0]):
            s += a[i]
        return s

    a = np.ones(int(gigabytes * 1e9 / 4), np.float32)
    total(a)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        total(a)
        out.append(a.nbytes / (time.perf_counter() - t) / 1e9)
    return out


def child(cmd: list[str], env: dict | None = None, first_output: bool = False) -> tuple[float, float, int, str]:
    """Run cmd; return (seconds to first stdout byte, seconds to exit, peak RSS bytes, stdout).

    Through benchmarks/spawn.py, so that the peak RSS is the command's own and not this process's
    (spawn.py says why) and both times count from the command's own start.
    """
    with tempfile.NamedTemporaryFile("r") as report, tempfile.TemporaryFile("w+b") as err:
        proc = subprocess.Popen([sys.executable, str(HERE / "spawn.py"), report.name, *cmd], stdout=subprocess.PIPE,
                                stderr=err, env=env)
        first = proc.stdout.read(1) if first_output else b""
        at_first = time.monotonic()
        rest = proc.stdout.read()
        proc.wait()
        done = time.monotonic()
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err.read().decode()[-2000:]}")
        start, peak = report.read().split()
    return at_first - float(start), done - float(start), int(peak), (first + rest).decode()


def time_to_first_token(model_arg: list[str], repeats: int, cold_repeats: int) -> dict:
    """A fresh ``awqinfer run`` process answering one token, Numba cache warm and cold."""
    cmd = [sys.executable, "-m", "awqinfer", "run", *model_arg, "--max-tokens", "1", "--temperature", "0",
           "Hello"]
    child(cmd, first_output=True)  # warms the Numba cache and the page cache
    out = {"warm": [], "cold": [], "rss": []}
    for r in range(max(repeats, cold_repeats)):
        if r < repeats:
            t, _, rss, _ = child(cmd, first_output=True)
            out["warm"].append(t)
            out["rss"].append(rss)
        if r >= cold_repeats:
            continue
        with tempfile.TemporaryDirectory() as numba_cache:
            t, _, _, _ = child(cmd, env={**os.environ, "NUMBA_CACHE_DIR": numba_cache}, first_output=True)
        out["cold"].append(t)
    out["command"] = " ".join(["awqinfer", *cmd[3:]])
    return out


def big_model(dims: dict, n_tokens: int, repeats: int, bandwidth: float) -> dict:
    """The 7B-shaped checkpoint: write, load and decode in fresh processes, delete."""
    with tempfile.TemporaryDirectory(prefix="awqinfer-7b-") as tmp:
        t = time.perf_counter()
        file_bytes = synth.write_checkpoint(Path(tmp), dims)
        write_s = time.perf_counter() - t
        runs = []
        for _ in range(repeats):
            _, _, rss, out = child([sys.executable, "-m", "benchmarks.synth", tmp, str(n_tokens)])
            runs.append({**json.loads(out), "peak_rss": rss})
    per_token = runs[0]["weight_bytes_per_token"]
    return {
        "file_bytes": file_bytes, "write_s": write_s, "dims": dims,
        "load_s": [r["load_s"] for r in runs],
        "tok_s": [len(r["steps_s"]) / sum(r["steps_s"]) for r in runs],
        "peak_rss": [r["peak_rss"] for r in runs], "rss_after_load": [r["rss_after_load"] for r in runs],
        "kv_cache_bytes": runs[0]["kv_cache_bytes"], "weight_bytes_per_token": per_token,
        "bound_tok_s": bandwidth * 1e9 / per_token,
    }



STREAM_REQUEST = "Write a long story about a lighthouse keeper who finds a message in a bottle. Take your time."


def stream_prompt_ids(tokenizer, vocab: int) -> list[int]:
    """The streamed runs' prompt: one chat turn through the model's template (ids modulo a toy vocabulary)."""
    return [i % vocab for i in tokenizer.encode_chat([{"role": "user", "content": STREAM_REQUEST}])]


@contextlib.contextmanager
def busy_process():
    """One process spinning on a core for the duration: the competing load of the contention figures."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield proc
    finally:
        proc.kill()
        proc.wait()
