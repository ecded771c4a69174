"""awqinfer against llama.cpp and PyTorch on this machine: one run, interleaved, medians and ranges.

    python -m benchmarks                 # the default model (SmolLM2-135M-Instruct, AWQ 4-bit), all peers
    python -m benchmarks --repeats 5     # more repeats; --help for the rest

What it measures (each figure a median over repeats, with min-max; the engines take
turns inside every repeat, in a rotating order, so the machine's drift cancels):

* prefill tokens/s at 128 and 512 prompt tokens, decode tokens/s over 128 greedy tokens,
  decode tokens/s with 1k and 2k tokens already in the cache; for awqinfer, llama.cpp
  (llama-cpp-python, 2 threads, the GGUF the default model is imported from) and
  transformers on torch (fp32, 2 threads), the peers when installed (``pip install -e .[bench]``);
* time to first token of a fresh ``awqinfer run`` process, Numba cache warm and cold, and its peak RSS;
* a Llama-2-7B-shaped AWQ checkpoint of random weights (written to a temp dir, deleted after):
  load time, decode tokens/s and peak RSS, against the memory-bandwidth bound (weight bytes
  read per token / this machine's read bandwidth, measured here too).

awqinfer's figures are withheld if its fast decode path's greedy tokens on the first prompt
differ from the readable reference path's. Results go to the terminal, RESULTS.md and a PNG.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
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


# --- measurements ---------------------------------------------------------------------------------


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
    """Run cmd; return (seconds to first stdout byte, seconds to exit, peak RSS bytes, stdout)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first = proc.stdout.read(1) if first_output else b""
    t_first = time.perf_counter() - t
    rest = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return t_first, time.perf_counter() - t, usage.ru_maxrss * 1024, (first + rest).decode()


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


# --- the run --------------------------------------------------------------------------------------


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

    def prefill(self, ids):
        return self.call(op="prefill", ids=list(ids))["seconds"]

    def greedy(self, ids, n):
        out = self.call(op="greedy", ids=list(ids), n=n)
        return out["tokens"], out["seconds"]

    def fill(self, ids, extra):
        self.call(op="fill", ids=list(ids), extra=extra)

    def decode_at(self, ctx, n):
        return self.call(op="decode_at", ctx=ctx, n=n)["seconds"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def load_engines(args, directory: Path, gguf: Path | None, log) -> list[Remote]:
    """awqinfer (always) and the peers that are installed and wanted, each in its own process."""
    heads = {"f32": ["f32"], "int8": ["int8"], "both": ["f32", "int8"]}[args.lm_head]
    engines = [Remote(["awqinfer", str(directory), head]) for head in heads]
    if gguf and not args.no_peers:
        n_ctx = max(args.contexts) + args.long_tokens + 8
        for argv in (["llama.cpp", str(gguf), str(n_ctx), str(args.threads)], ["torch", str(gguf), str(args.threads)]):
            try:
                engines.append(Remote(argv))
            except ImportError as e:
                log(f"skipping {argv[0]}: {e}")
    return engines


def check_fast_path(awq: Remote, ids, n) -> tuple[bool, list[int], list[int]]:
    """Greedy tokens through the fast decode path and through the reference path: equal?"""
    out = awq.call(op="check", ids=list(ids), n=n)
    return out["fast"] == out["reference"], out["fast"], out["reference"]


def run(args) -> dict:
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    from awqinfer.engine.checkpoint.config import ModelConfig
    from awqinfer.engine.hub import default_gguf, default_model_dir
    from awqinfer.engine.text.tokenizer import Tokenizer

    directory = Path(args.model) if args.model else default_model_dir()
    gguf = Path(args.gguf) if args.gguf else (default_gguf() if not args.model else None)
    tokenizer = Tokenizer(directory)
    vocab = ModelConfig.load(directory).vocab_size
    engines = load_engines(args, directory, gguf, log)
    long_n = max(args.contexts) + 1
    ids = {n: prompt_ids(tokenizer, n, vocab) for n in (*args.prompt_lengths, args.decode_prompt, long_n)}
    first = ids[args.decode_prompt]

    log("checking the fast decode path against the reference ...")
    checks = {}
    for e in engines:
        if e.name.startswith("awqinfer"):
            checks[e.name] = check_fast_path(e, first, args.check_tokens)
            log(f"  {e.name}: " + ("greedy tokens equal" if checks[e.name][0] else "MISMATCH: its speed is withheld"))
    same = all(c[0] for c in checks.values())

    results = {e.name: {} for e in engines}
    add = lambda engine, key, value: results[engine.name].setdefault(key, []).append(value)
    log("warming up and filling long caches ...")
    for e in engines:
        e.prefill(ids[args.prompt_lengths[0]])
        e.greedy(first, 4)
        e.fill(ids[long_n], args.long_tokens + 1)
    for r in range(args.repeats):
        order = engines[r % len(engines):] + engines[: r % len(engines)]
        for e in order:
            log(f"repeat {r + 1}/{args.repeats}: {e.name}")
            for n in args.prompt_lengths:
                add(e, f"prefill {n}", n / e.prefill(ids[n]))
            _, seconds = e.greedy(first, args.decode_tokens + 1)
            add(e, f"decode {args.decode_tokens}", args.decode_tokens / seconds)
            for ctx in args.contexts:
                add(e, f"decode @{ctx}", args.long_tokens / e.decode_at(ctx, args.long_tokens))
    for e in engines:
        e.close()
    for name, (equal, _, _) in checks.items():
        if not equal:
            results[name] = {k: [float("nan")] for k in results[name]}

    out = {
        "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
        "started": started.isoformat(timespec="seconds"), "machine": machine(),
        "load_average_before": load_before, "args": vars(args), "model_dir": str(directory),
        "gguf": str(gguf) if gguf else None, "load_s": {e.name: e.load_s for e in engines},
        "fast_path_matches_reference": same, "checks": checks,
        "fast_tokens": next(iter(checks.values()))[1], "reference_tokens": next(iter(checks.values()))[2],
        "engines": results,
    }
    if not args.no_ttft:
        log("time to first token of fresh processes ...")
        out["ttft"] = time_to_first_token(["--model", str(directory)] if args.model else [], args.ttft_repeats,
                                          args.ttft_cold_repeats)
    log("read bandwidth ...")
    bw = read_bandwidth(args.bandwidth_gb, 5)
    out["bandwidth_gbs"] = bw
    if args.big != "none":
        log(f"{args.big} AWQ checkpoint ...")
        dims = synth.LLAMA2_7B if args.big == "7b" else synth.TINY
        out["big"] = big_model(dims, args.big_tokens, args.big_repeats, float(np.median(bw)))
    out["load_average_after"] = os.getloadavg()
    return out


# --- reporting ------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("numpy", "numba", "llama_cpp_python", "torch", "transformers"):
        try:
            from importlib.metadata import version

            versions[pkg] = version(pkg.replace("_python", "-python").replace("llama_cpp", "llama-cpp"))
        except Exception:
            pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem / 1e9, 1), "python": platform.python_version(),
            "versions": versions}


def fmt(values, digits=1) -> str:
    v = np.asarray(values, float)
    if v.size == 0 or np.isnan(v).all():
        return "-"
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{np.median(v):.{digits}f} ({v.min():.{digits}f}-{v.max():.{digits}f})"


def ratio(a, b) -> str:
    if not a or not b or np.isnan(np.median(a)) or np.isnan(np.median(b)):
        return "-"
    return f"{np.median(a) / np.median(b):.2f}x"


def table(out) -> str:
    res = out["engines"]
    ours = [n for n in res if n.startswith("awqinfer")]
    names = ours + [n for n in ("llama.cpp", "torch") if n in res]
    pairs = [(a, b) for a in ours for b in ("llama.cpp", "torch") if b in res]
    head = "| tokens/s, median (min-max) | " + " | ".join(names + [f"{a} / {b}" for a, b in pairs]) + " |"
    rows = [head, "|" + " --- |" * (len(names) + len(pairs) + 1)]
    for key in res["awqinfer"]:
        cells = [fmt(res[n].get(key, [])) for n in names] + [ratio(res[a][key], res[b].get(key)) for a, b in pairs]
        rows.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def targets(out) -> list[tuple[str, str, bool | None]]:
    """(target, where it stands, met?) for each target of the issue."""
    res, aw = out["engines"], out["engines"]["awqinfer"]
    med = lambda v: float(np.median(v)) if v else float("nan")
    lc, tc = res.get("llama.cpp", {}), res.get("torch", {})
    rows = []
    dec = next(k for k in aw if k.startswith("decode ") and "@" not in k)
    checks = [("decode >= 1.0x llama.cpp", dec, lc, 1.0), ("decode >= 3x torch fp32", dec, tc, 3.0)] + \
        [(f"prefill {k.split()[1]} >= 0.5x llama.cpp", k, lc, 0.5) for k in aw if k.startswith("prefill")]
    for name in [n for n in res if n.startswith("awqinfer")]:
        for label, key, peer, need in checks:
            label = label if name == "awqinfer" else f"{label} ({name})"
            if key in peer:
                r = med(res[name][key]) / med(peer[key])
                rows.append((label, f"{r:.2f}x", bool(r >= need)))
            else:
                rows.append((label, "peer not measured", None))
    if "big" in out:
        b = out["big"]
        frac = med(b["tok_s"]) / b["bound_tok_s"]
        rows.append(("7B-shaped decode >= 70% of the bandwidth bound", f"{100 * frac:.0f}%", bool(frac >= 0.7)))
        limit = 1.1 * (b["file_bytes"] + b["kv_cache_bytes"])
        rss = med(b["peak_rss"])
        rows.append(("7B-shaped peak RSS <= (file + KV cache) x 1.1",
                     f"{rss / 1e9:.2f} GB vs {limit / 1e9:.2f} GB", bool(rss <= limit)))
    if "ttft" in out:
        t = med(out["ttft"]["warm"])
        rows.append(("time to first token, warm cache <= 2 s", f"{t:.2f} s", bool(t <= 2.0)))
    return rows


def report(out) -> str:
    m = out["machine"]
    lines = [
        "# awqinfer benchmarks",
        "",
        f"Run {out['started']} on {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        f"Command: `{out['command']}`. Model: `{out['model_dir']}`"
        + (f"; peers read `{out['gguf']}`." if out["gguf"] else "."),
        f"Load average before / after: {', '.join(f'{x:.1f}' for x in out['load_average_before'])} / "
        f"{', '.join(f'{x:.1f}' for x in out['load_average_after'])} (the machine is shared: figures are "
        "medians over interleaved repeats, min-max in brackets).",
        "",
        "Fast decode path vs reference path, greedy tokens on the first prompt: " + "; ".join(
            f"{name} {'equal' if c[0] else 'DIFFERENT: awqinfer figures withheld'} ({len(c[1])} tokens)"
            for name, c in out["checks"].items()) + ". `awqinfer` is the library's default (f32 lm_head); "
        "`awqinfer int8-head` sets `Model.fast_lm_head_int8`: logits screened through an int8 copy of the "
        "lm_head, the top 32 recomputed in f32 (the argmax is the f32 one; other logits differ by ~0.5%).",
        "",
        table(out),
        "",
    ]
    if "ttft" in out:
        t = out["ttft"]
        lines += [f"Time to first token, fresh process (`{t['command']}`): warm Numba cache {fmt(t['warm'], 2)} s, "
                  f"cold {fmt(t['cold'], 2)} s; peak RSS {fmt(np.array(t['rss']) / 1e6, 0)} MB.", ""]
    lines += [f"Read bandwidth (2-thread Numba sum): {fmt(out['bandwidth_gbs'])} GB/s.", ""]
    if "big" in out:
        b = out["big"]
        d = b["dims"]
        lines += [
            f"Synthetic AWQ checkpoint ({d['layers']} layers, hidden {d['hidden']}, intermediate {d['intermediate']}, "
            f"vocab {d['vocab']}, group {d['group']}): file {b['file_bytes'] / 1e9:.2f} GB, written in {b['write_s']:.0f} s; "
            f"load {fmt(b['load_s'], 2)} s; decode {fmt(b['tok_s'], 2)} tokens/s; "
            f"bound {b['bound_tok_s']:.2f} tokens/s ({b['weight_bytes_per_token'] / 1e9:.2f} GB of weights read per "
            f"token at the measured bandwidth); peak RSS {fmt(np.array(b['peak_rss']) / 1e9, 2)} GB "
            f"(after load {fmt(np.array(b['rss_after_load']) / 1e9, 2)} GB; KV cache {b['kv_cache_bytes'] / 1e6:.0f} MB).",
            "",
        ]
    lines += ["| target | where it stands | met |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {'yes' if c else 'no' if c is not None else '-'} |" for a, b, c in targets(out)]
    return "\n".join(lines) + "\n"


def plot(out, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    args = out["args"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, res in out["engines"].items():
        xs = [args["decode_prompt"] + args["decode_tokens"] // 2] + list(args["contexts"])
        keys = [f"decode {args['decode_tokens']}"] + [f"decode @{c}" for c in args["contexts"]]
        ys = [np.median(res[k]) for k in keys]
        lo = [np.median(res[k]) - np.min(res[k]) for k in keys]
        hi = [np.max(res[k]) - np.median(res[k]) for k in keys]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=name)
    ax.set_xlabel("tokens in the KV cache")
    ax.set_ylabel("decode tokens/s (median, min-max)")
    ax.set_title(f"Decode speed vs context, {out['machine']['cores']} cores")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="awqinfer checkpoint directory (default: the default model, built if needed)")
    p.add_argument("--gguf", help="GGUF for the peers (default: the default model's, when --model is not given)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="threads for llama.cpp and torch")
    p.add_argument("--prompt-lengths", type=lambda s: [int(x) for x in s.split(",")], default=[128, 512])
    p.add_argument("--decode-prompt", type=int, default=32, help="prompt tokens before the decode run")
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--contexts", type=lambda s: [int(x) for x in s.split(",")], default=[1024, 2048])
    p.add_argument("--long-tokens", type=int, default=32, help="decode steps timed at each long context")
    p.add_argument("--check-tokens", type=int, default=32, help="greedy tokens compared fast vs reference")
    p.add_argument("--lm-head", choices=("f32", "int8", "both"), default="both",
                   help="awqinfer's fast-path lm_head: f32 (the default), the int8 screen, or both side by side")
    p.add_argument("--no-peers", action="store_true")
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
    target.mkdir(parents=True, exist_ok=True)
    text = report(out)
    if plot(out, target / "decode_vs_context.png"):
        text += "\n![decode tokens/s against context length](decode_vs_context.png)\n"
    (target / "RESULTS.md").write_text(text)
    (target / "results.json").write_text(json.dumps(out, indent=1, default=str))
    print(text)
    return 0 if out["fast_path_matches_reference"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
