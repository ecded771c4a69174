"""awqinfer against llama.cpp on this machine, each through its own loop: one run, interleaved, medians and ranges.

    python -m benchmarks                 # the default model (SmolLM2-135M-Instruct, AWQ 4-bit), all peers
    python -m benchmarks --repeats 5     # more repeats; --help for the rest

Two levels, each engine timed through the loop its users run (every figure a median over
repeats with min-max; the engines take turns inside every repeat, in a rotating order):

* as users meet it: awqinfer's ``LLM.run(stream=True)`` against llama-cpp-python's
  ``create_completion(stream=True)``, greedy, the same prompt ids, up to 128 new tokens:
  decode tokens/s after the first chunk, and the seconds to the first chunk;
* the kernels: awqinfer's raw ``Model.forward`` loop against llama.cpp's own ``llama-bench``
  (pp128, pp512, tg128, and tg at 1k/2k cached tokens), built from the sources vendored in the
  same llama-cpp-python version (benchmarks/build_llama_cpp.sh); transformers on torch with --torch;
* ``llama-batched-bench`` (aggregate decode of 1-16 streams): the figure batching must reach;
* under one competing busy process: awqinfer's default (its thread chooser), 1 and 2 threads,
  against llama-bench tg64 with 2 and 1 threads;
* time to first token and peak RSS of a fresh ``awqinfer run`` process, beside llama.cpp's peak RSS;
* a Llama-2-7B-shaped AWQ checkpoint of random weights: decode against the bandwidth bound, peak RSS.

awqinfer's figures are withheld if its fast decode path's greedy tokens on the first prompt
differ from the readable reference path's. Results go to the terminal, RESULTS.md and a PNG.
Run it on a quiet machine (the load average before and after is recorded); on a shared one,
hold the machine's CPU lock for the whole run (``flock /tmp/awqinfer-cpu.lock python -m benchmarks``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from . import llama_tools, synth
from .measure import (HERE, big_model, busy_process, prompt_ids, read_bandwidth, stream_prompt_ids,
                      time_to_first_token)
from .report import machine, plot, report
from .sections import write_section


class Remote:
    """An engine in a worker process (benchmarks/worker.py), with the engines.py interface."""

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.worker", *argv], cwd=HERE.parent,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        hello = self._read()
        if "unavailable" in hello:
            self.close()
            raise ImportError(hello["unavailable"])
        self.name, self.load_s = hello["ready"], hello["load_s"]

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"benchmark worker {self.proc.args[3:]} exited ({self.proc.wait()})")

    def call(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def check_fast_path(awq: Remote, ids, n) -> tuple[bool, list[int], list[int]]:
    """Greedy tokens through the fast decode path and through the reference path: equal?"""
    out = awq.call(op="check", ids=list(ids), n=n)
    return out["fast"] == out["reference"], out["fast"], out["reference"]


def kernel_level(args, ours: list[Remote], torch: Remote | None, gguf, ids, log) -> dict:
    """Raw loops: awqinfer's Model.forward (and torch's) against llama-bench, interleaved repeats."""
    res: dict[str, dict[str, list]] = {}
    add = lambda name, key, value: res.setdefault(name, {}).setdefault(key, []).append(value)
    first, long_n = ids[args.decode_prompt], max(args.contexts) + 1
    raw = ours + ([torch] if torch else [])
    for e in raw:
        e.call(op="prefill", ids=ids[args.prompt_lengths[0]])
        e.call(op="greedy", ids=first, n=4)
        e.call(op="fill", ids=ids[long_n], extra=args.long_tokens + 1)
    runners = [(e.name, e) for e in raw] + ([("llama.cpp", None)] if gguf else [])
    for r in range(args.repeats):
        for name, e in runners[r % len(runners):] + runners[: r % len(runners)]:
            log(f"kernels, repeat {r + 1}/{args.repeats}: {name}")
            if e is None:
                bench = llama_tools.llama_bench(gguf, args.threads, args.prompt_lengths, args.decode_tokens)
                for ctx in args.contexts:
                    at = llama_tools.llama_bench(gguf, args.threads, (), args.long_tokens, depth=ctx)
                    bench[f"@{ctx}"] = at[f"tg{args.long_tokens}"]
                for n in args.prompt_lengths:
                    add(name, f"prefill {n}", float(np.mean(bench[f"pp{n}"])))
                add(name, f"decode {args.decode_tokens}", float(np.mean(bench[f"tg{args.decode_tokens}"])))
                for ctx in args.contexts:
                    add(name, f"decode @{ctx}", float(np.mean(bench[f"@{ctx}"])))
                continue
            for n in args.prompt_lengths:
                add(name, f"prefill {n}", n / e.call(op="prefill", ids=ids[n])["seconds"])
            seconds = e.call(op="greedy", ids=first, n=args.decode_tokens + 1)["seconds"]
            add(name, f"decode {args.decode_tokens}", args.decode_tokens / seconds)
            for ctx in args.contexts:
                add(name, f"decode @{ctx}", args.long_tokens / e.call(op="decode_at", ctx=ctx, n=args.long_tokens)["seconds"])
    return res


def user_level(args, ours: list[Remote], peer: Remote | None, ids, log) -> dict:
    """Streamed generation as users call it: decode tokens/s after the first chunk, seconds to it."""
    res: dict[str, dict[str, list]] = {}
    engines = ours + ([peer] if peer else [])
    for e in engines:
        e.call(op="stream", ids=ids, n=8)  # warm
    for r in range(args.repeats):
        for e in engines[r % len(engines):] + engines[: r % len(engines)]:
            log(f"streamed, repeat {r + 1}/{args.repeats}: {e.name}")
            out = e.call(op="stream", ids=ids, n=args.decode_tokens)
            rate = (out["tokens"] - 1) / out["decode_s"] if out["tokens"] > 1 else float("nan")
            for key, value in (("decode", rate), ("first chunk s", out["first_s"]), ("tokens", out["tokens"])):
                res.setdefault(e.name, {}).setdefault(key, []).append(value)
    return res


def contention(args, directory: Path, gguf, ids, log) -> dict:
    """Decode tokens/s while one busy process competes for the cores: awqinfer's policies and llama.cpp's threads."""
    res: dict[str, list] = {}
    fixed = sorted({1, min(args.threads, len(os.sched_getaffinity(0)))})
    ours = [Remote(["awqinfer", str(directory), "int8", t]) for t in ["auto", *map(str, fixed)]]
    with busy_process():
        for e in ours:
            e.call(op="greedy", ids=ids, n=4)
        for r in range(args.repeats):
            log(f"under a busy process, repeat {r + 1}/{args.repeats}")
            for e in ours:
                seconds = e.call(op="greedy", ids=ids, n=args.contention_tokens + 1)["seconds"]
                res.setdefault(e.name, []).append(args.contention_tokens / seconds)
            for t in sorted({args.threads, 1}, reverse=True):
                if gguf:
                    tg = llama_tools.llama_bench(gguf, t, (), args.contention_tokens)
                    res.setdefault(f"llama.cpp {t}t", []).append(float(np.mean(tg[f"tg{args.contention_tokens}"])))
    for e in ours:
        e.close()
    return res


def run(args) -> dict:
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    from awqinfer.engine.checkpoint.config import ModelConfig
    from awqinfer.engine.hub import default_gguf, default_model_dir
    from awqinfer.engine.text.tokenizer import Tokenizer

    directory = Path(args.model) if args.model else default_model_dir()
    gguf = Path(args.gguf) if args.gguf else (default_gguf() if not args.model else None)
    gguf = None if args.no_peers else gguf
    tokenizer = Tokenizer(directory)
    vocab = ModelConfig.load(directory).vocab_size
    heads = {"int8": ["int8"], "f32": ["f32"], "both": ["int8", "f32"]}[args.lm_head]
    ours = [Remote(["awqinfer", str(directory), head]) for head in heads]
    long_n = max(args.contexts) + 1
    ids = {n: prompt_ids(tokenizer, n, vocab) for n in (*args.prompt_lengths, args.decode_prompt, long_n)}
    chat = stream_prompt_ids(tokenizer, vocab)

    log("checking the fast decode path against the reference ...")
    checks = {e.name: check_fast_path(e, ids[args.decode_prompt], args.check_tokens) for e in ours}
    for name, (equal, _, _) in checks.items():
        log(f"  {name}: " + ("greedy tokens equal" if equal else "MISMATCH: its speed is withheld"))

    def optional(argv):
        try:
            return Remote(argv)
        except ImportError as e:
            log(f"skipping {argv[0]}: {e}")
            return None

    torch = optional(["torch", str(gguf), str(args.threads)]) if gguf and args.torch else None
    n_ctx = len(chat) + args.decode_tokens + 8
    peer = optional(["llama-cpp-python", str(gguf), str(n_ctx), str(args.threads)]) if gguf else None
    out = {
        "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
        "started": started.isoformat(timespec="seconds"), "machine": machine(),
        "load_average_before": load_before, "args": vars(args), "model_dir": str(directory),
        "gguf": str(gguf) if gguf else None, "checks": checks,
        "fast_path_matches_reference": all(c[0] for c in checks.values()),
        "user": user_level(args, ours, peer, chat, log),
        "kernel": kernel_level(args, ours, torch, gguf, ids, log),
    }
    for e in ours + [x for x in (torch, peer) if x]:
        e.close()
    for name, (equal, _, _) in checks.items():
        if not equal:
            for level in ("user", "kernel"):
                out[level][name] = {k: [float("nan")] * len(v) for k, v in out[level][name].items()}
    if gguf and not args.no_batched:
        log("llama-batched-bench ...")
        out["batched"] = llama_tools.batched_bench(gguf, args.threads)
    if not args.no_contention:
        out["contention"] = contention(args, directory, gguf, ids[args.decode_prompt], log)
    if not args.no_ttft:
        log("time to first token of fresh processes ...")
        out["ttft"] = time_to_first_token(["--model", str(directory)] if args.model else [], args.ttft_repeats,
                                          args.ttft_cold_repeats)
        if gguf:
            out["ttft"]["llama_cpp_rss"] = llama_tools.peak_rss(gguf, args.threads)
    log("read bandwidth ...")
    bw = read_bandwidth(args.bandwidth_gb, 5)
    out["bandwidth_gbs"] = bw
    if args.big != "none":
        log(f"{args.big} AWQ checkpoint ...")
        dims = synth.LLAMA2_7B if args.big == "7b" else synth.TINY
        out["big"] = big_model(dims, args.big_tokens, args.big_repeats, float(np.median(bw)))
    out["load_average_after"] = os.getloadavg()
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="awqinfer checkpoint directory (default: the default model, built if needed)")
    p.add_argument("--gguf", help="GGUF for the peers (default: the default model's, when --model is not given)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="threads for llama.cpp (and torch)")
    p.add_argument("--prompt-lengths", type=lambda s: [int(x) for x in s.split(",")], default=[128, 512])
    p.add_argument("--decode-prompt", type=int, default=32, help="prompt tokens before the raw decode run")
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--contexts", type=lambda s: [int(x) for x in s.split(",")], default=[1024, 2048])
    p.add_argument("--long-tokens", type=int, default=32, help="decode steps timed at each long context")
    p.add_argument("--check-tokens", type=int, default=32, help="greedy tokens compared fast vs reference")
    p.add_argument("--contention-tokens", type=int, default=64, help="decode steps timed beside a busy process")
    p.add_argument("--lm-head", choices=("int8", "f32", "both"), default="both",
                   help="awqinfer's fast-path lm_head: the int8 screen (the default), f32, or both side by side")
    p.add_argument("--no-peers", action="store_true", help="awqinfer alone")
    p.add_argument("--torch", action="store_true", help="also transformers on torch (fp32), raw loop")
    p.add_argument("--no-batched", action="store_true")
    p.add_argument("--no-contention", action="store_true")
    p.add_argument("--no-ttft", action="store_true")
    p.add_argument("--ttft-repeats", type=int, default=3)
    p.add_argument("--ttft-cold-repeats", type=int, default=2, help="fresh processes with an empty Numba cache")
    p.add_argument("--big", choices=("7b", "tiny", "none"), default="7b")
    p.add_argument("--big-tokens", type=int, default=16)
    p.add_argument("--big-repeats", type=int, default=2)
    p.add_argument("--bandwidth-gb", type=float, default=1.0)
    p.add_argument("--out", default=str(HERE), help="directory for RESULTS.md, results.json and the plot")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--from-json", help="only write RESULTS.md and the plot again from a results.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = json.loads(Path(args.from_json).read_text()) if args.from_json else run(args)
    target = Path(args.out)
    if (target / "batching.json").exists():  # benchmarks/batching.py's latest figures
        out["batching"] = json.loads((target / "batching.json").read_text())
    target.mkdir(parents=True, exist_ok=True)
    text = report(out)
    if plot(out, target / "decode_vs_context.png"):
        text += "\n![decode tokens/s against context length](decode_vs_context.png)\n"
    write_section(target / "RESULTS.md", "benchmarks.run", text, first=True)  # the notes below it stay
    (target / "results.json").write_text(json.dumps(out, indent=1, default=str))
    print(text)
    return 0 if out["fast_path_matches_reference"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
