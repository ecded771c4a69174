"""benchmarks/run.py's results -> RESULTS.md (tables, the issue's targets) and a plot of decode speed vs context."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

PEER = "llama.cpp"  # llama-bench, llama.cpp's own loop
PY_PEER = "llama-cpp-python"  # its Python binding's streamed create_completion


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from awqinfer.kernels.simd import AVX2, VNNI

    versions = {}
    for pkg in ("numpy", "numba", "llama-cpp-python", "torch", "transformers"):
        try:
            from importlib.metadata import version

            versions[pkg] = version(pkg)
        except Exception:
            pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem / 1e9, 1), "python": platform.python_version(),
            "avx2": AVX2, "vnni": VNNI, "versions": versions}


def med(values) -> float:
    return float(np.median(values)) if len(values) else float("nan")


def fmt(values, digits=1) -> str:
    v = np.asarray(values, float)
    if v.size == 0 or np.isnan(v).all():
        return "-"
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{np.median(v):.{digits}f} ({v.min():.{digits}f}-{v.max():.{digits}f})"


def ratio(a, b) -> float:
    return med(a) / med(b) if a and b else float("nan")


def _table(res: dict, names: list[str], peers: list[str], keys: list[str], unit: str) -> list[str]:
    ours = [n for n in names if n.startswith("awqinfer")]
    pairs = [(a, b) for a in ours for b in peers if b in res]
    cols = [n for n in names if n in res]
    rows = [f"| {unit} | " + " | ".join(cols + [f"{a} / {b}" for a, b in pairs]) + " |",
            "|" + " --- |" * (len(cols) + len(pairs) + 1)]
    for key in keys:
        cells = [fmt(res[n].get(key, [])) for n in cols]
        cells += [f"{ratio(res[a].get(key), res[b].get(key)):.2f}x" for a, b in pairs]
        rows.append(f"| {key} | " + " | ".join(c.replace("nanx", "-") for c in cells) + " |")
    return rows


def targets(out) -> list[tuple[str, str, bool | None]]:
    """(target, where it stands, met?) for each target of the issue, from one run's ratios."""
    rows = []
    user, kern = out.get("user", {}), out.get("kernel", {})

    def versus(label, a, b, need):
        if a and b:
            r = ratio(a, b)
            rows.append((label, f"{r:.2f}x", bool(r >= need)))
        else:
            rows.append((label, "not measured", None))

    dec = f"decode {out['args']['decode_tokens']}"
    versus(f"streamed decode >= 1.5x {PY_PEER}", user.get("awqinfer", {}).get("decode"),
           user.get(PY_PEER, {}).get("decode"), 1.5)
    versus("raw decode >= 1.2x llama-bench tg (moonshot 1.5x)", kern.get("awqinfer", {}).get(dec),
           kern.get(PEER, {}).get(dec), 1.2)
    big_prompt = f"prefill {max(out['args']['prompt_lengths'])}"
    versus(f"{big_prompt} >= 1.0x llama-bench", kern.get("awqinfer", {}).get(big_prompt),
           kern.get(PEER, {}).get(big_prompt), 1.0)
    con = out.get("contention", {})
    peer_default = f"llama.cpp {out['args']['threads']}t"
    versus(f"beside a busy process: default >= llama.cpp's default ({out['args']['threads']} threads)",
           con.get("awqinfer"), con.get(peer_default), 1.0)
    if "big" in out:
        b = out["big"]
        frac = med(b["tok_s"]) / b["bound_tok_s"]
        rows.append(("7B-shaped decode >= 80% of the bandwidth bound", f"{100 * frac:.0f}%", bool(frac >= 0.8)))
        limit = 1.1 * (b["file_bytes"] + b["kv_cache_bytes"])
        rss = med(b["peak_rss"])
        rows.append(("7B-shaped peak RSS <= (file + KV cache) x 1.1", f"{rss / 1e9:.2f} GB vs {limit / 1e9:.2f} GB",
                     bool(rss <= limit)))
    if "ttft" in out:
        t = out["ttft"]
        if "llama_cpp_rss" in t:
            r = med(t["rss"]) / t["llama_cpp_rss"]
            rows.append(("peak RSS <= 1.2x llama.cpp's", f"{r:.2f}x ({med(t['rss']) / 1e6:.0f} vs "
                         f"{t['llama_cpp_rss'] / 1e6:.0f} MB)", bool(r <= 1.2)))
        w = med(t["warm"])
        rows.append(("warm time to first token <= 0.5 s", f"{w:.2f} s", bool(w <= 0.5)))
    return rows


def report(out) -> str:
    m, args = out["machine"], out["args"]
    lb, la = out["load_average_before"], out["load_average_after"]
    isa = "AVX2" + (" + VNNI" if m.get("vnni") else ", no VNNI") if m.get("avx2") else "no AVX2 (plain-loop kernels)"
    lines = [
        "# awqinfer benchmarks",
        "",
        f"Run {out['started']} on {m['cpu']} ({isa}), {m['cores']} cores, {m['memory_gb']} GB; Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        f"Command: `{out['command']}`. Model: `{out['model_dir']}`"
        + (f"; peers read `{out['gguf']}`." if out["gguf"] else "."),
        f"Load average before / after: {', '.join(f'{x:.1f}' for x in lb)} / {', '.join(f'{x:.1f}' for x in la)}. "
        "Figures are medians over interleaved repeats, min-max in brackets.",
        "",
        "Fast decode path vs reference path, greedy tokens on the first prompt: " + "; ".join(
            f"{name} {'equal' if c[0] else 'DIFFERENT: awqinfer figures withheld'} ({len(c[1])} tokens)"
            for name, c in out["checks"].items()) + ".",
        "",
        f"## As users meet it: streamed generation, greedy, up to {args['decode_tokens']} new tokens",
        "",
        f"awqinfer `LLM.run(stream=True)` against llama-cpp-python `create_completion(stream=True)` ({args['threads']} "
        "threads), the same chat prompt ids. Decode = (tokens - 1) / time from the first chunk to the last.",
        "",
    ]
    user = out.get("user", {})
    names = sorted(user, key=lambda n: (not n.startswith("awqinfer"), n))
    lines += _table(user, names, [PY_PEER], ["decode", "first chunk s", "tokens"], "streamed")
    kern = out.get("kernel", {})
    keys = list(next(iter(kern.values()), {}))
    lines += ["", "## The kernels: raw loops", "",
              f"awqinfer's `Model.forward` token by token against llama.cpp's `llama-bench` ({args['threads']} threads; "
              "prefill = pp, decode = tg, decode @N = tg at depth N), tokens/s.", ""]
    lines += _table(kern, sorted(kern, key=lambda n: (not n.startswith("awqinfer"), n)), [PEER], keys, "tokens/s")
    if "batched" in out:
        b = out["batched"]
        lines += ["", "llama.cpp's `llama-batched-bench` (128 prompt + 128 new tokens per stream), aggregate decode "
                  "tokens/s: " + ", ".join(f"{n} streams {v:.0f}" for n, v in sorted(b.items(), key=lambda x: int(x[0])))
                  + "."]
    if "batching" in out:
        lines += batching_section(out["batching"])
    if "contention" in out:
        con = out["contention"]
        lines += ["", f"## Beside one busy process (a Python loop on one core), decode tokens/s over "
                  f"{args['contention_tokens']} tokens", "",
                  "| engine | tokens/s |", "| --- | --- |"]
        lines += [f"| {name} | {fmt(v)} |" for name, v in con.items()]
        lines += ["", "`awqinfer` is the default: no thread count given, its thread chooser times the steps; "
                  "`1t`/`2t`: `threads=` fixed."]
    lines.append("")
    if "ttft" in out:
        t = out["ttft"]
        lines += [f"Time to first token, fresh process (`{t['command']}`): warm Numba cache {fmt(t['warm'], 2)} s, "
                  f"cold {fmt(t['cold'], 2)} s; peak RSS {fmt(np.array(t['rss']) / 1e6, 0)} MB"
                  + (f" (llama.cpp's `llama-bench` generating 32 tokens: {t['llama_cpp_rss'] / 1e6:.0f} MB)."
                     if "llama_cpp_rss" in t else "."), ""]
    lines += [f"Read bandwidth (2-thread Numba sum): {fmt(out['bandwidth_gbs'])} GB/s.", ""]
    if "big" in out:
        b = out["big"]
        d = b["dims"]
        rerun = b.get("rerun")  # measured alone, after the run (benchmarks/measure.py's big_model)
        lines += [
            (f"Rerun {rerun['started']}, {rerun['why']} (load average {rerun['load_average'][0][0]:.1f} before, "
             f"{rerun['load_average'][1][0]:.1f} after; read bandwidth then {fmt(rerun['bandwidth_gbs'])} GB/s): "
             if rerun else "") +
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


def batching_section(b: dict) -> list[str]:
    """benchmarks/batching.py's figures: concurrent streams against llama-batched-bench, and 16- vs 32-bit KV."""
    peer = {int(n): v for n, v in b.get("llama_batched", {}).items()}
    lines = []
    if "streams" in b:
        lines += ["", "## Concurrent streams (continuous batching), greedy, "
                  f"up to {b['args']['tokens']} new tokens a stream", "",
                  "N threads call `LLM.run(stream=True)` at once (`python -m benchmarks.batching`); aggregate = the "
                  "chunks (~tokens) all streams got per second while every one was decoding, from the last stream's "
                  "first chunk to the first one's last (their prompts' prefill is outside it, as it is outside "
                  "llama.cpp's decode figure); per stream = the mean of each stream's own decode tokens/s. "
                  "llama.cpp: `llama-batched-bench` (its own loop, 2 threads). "
                  f"Load average before/after: {fmt_load(b['load_average_before'])} / "
                  f"{fmt_load(b['load_average_after'])}.", "",
                  "| streams | awqinfer aggregate tok/s | per stream | first chunk s | llama.cpp aggregate | ratio |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for n, r in sorted(b.get("streams", {}).items(), key=lambda x: int(x[0])):
        theirs = peer.get(int(n), float("nan"))
        lines.append(f"| {n} | {r['aggregate']:.1f} | {r['per_stream']:.1f} | {r['first_chunk_s']:.2f} | "
                     f"{theirs:.1f} | {r['aggregate'] / theirs:.2f} |")
    if "newcomer" in b:
        c = b["newcomer"]
        lines += ["", f"A newcomer's first chunk: alone {c['alone_s']:.2f} s, while {c['running']} streams decode "
                  f"{c['beside_s']:.2f} s ({c['beside_s'] / c['alone_s']:.1f}x)."]
    if "kv" in b:
        kv = b["kv"]
        contexts = sorted(kv["float16"], key=int)
        before, after = b["kv_load_average"]
        lines += ["", "Decode tokens/s after a long context, `Model.forward`, float16 against float32 KV caches "
                  f"(median of {b['args']['repeats']} turns each; load average {fmt_load(before)} / {fmt_load(after)}):",
                  "",
                  "| KV | " + " | ".join(f"after {c}" for c in contexts) + " |",
                  "| --- | " + " | ".join("---:" for _ in contexts) + " |"]
        lines += [f"| {dtype} | " + " | ".join(f"{kv[dtype][c]:.1f}" for c in contexts) + " |" for dtype in kv]
        lines.append("| gain | " + " | ".join(f"{kv['float16'][c] / kv['float32'][c]:.2f}x" for c in contexts) + " |")
    return lines + (["", "![aggregate decode tokens/s against concurrent streams](batching.png)"] if "streams" in b else [])


def _save(fig, ax, path: Path) -> bool:
    """Finish a plot the same way for every figure (zero-based y, grid, legend) and write it to ``path``."""
    import matplotlib.pyplot as plt

    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_streams(b: dict, path: Path) -> bool:
    """Aggregate decode tokens/s against concurrent streams, awqinfer and llama.cpp; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    ours = sorted((int(n), r["aggregate"]) for n, r in b["streams"].items())
    ax.plot(*zip(*ours), marker="o", label="awqinfer (LLM.run, streamed)")
    if b.get("llama_batched"):
        ax.plot(*zip(*sorted((int(n), v) for n, v in b["llama_batched"].items())), marker="s",
                label="llama.cpp (llama-batched-bench)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("aggregate decode tokens/s")
    return _save(fig, ax, path)


def fmt_load(load) -> str:
    return "/".join(f"{x:.1f}" for x in load)


def plot(out, path: Path) -> bool:
    """Decode tokens/s against tokens in the cache, raw loops, one line per engine; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    args = out["args"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, res in out["kernel"].items():
        xs = [args["decode_prompt"] + args["decode_tokens"] // 2] + list(args["contexts"])
        keys = [f"decode {args['decode_tokens']}"] + [f"decode @{c}" for c in args["contexts"]]
        ys = [np.median(res[k]) for k in keys]
        lo = [np.median(res[k]) - np.min(res[k]) for k in keys]
        hi = [np.max(res[k]) - np.median(res[k]) for k in keys]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=name)
    ax.set_xlabel("tokens in the KV cache")
    ax.set_ylabel("decode tokens/s (median, min-max)")
    ax.set_title(f"Decode speed vs context, {out['machine']['cores']} cores")
    return _save(fig, ax, path)
