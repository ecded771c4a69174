"""Decode and prefill speed of awqinfer on an NVIDIA GPU, against the GPU's memory-bandwidth bound.

    python -m benchmarks.cuda_bench                          # the default model (SmolLM2-135M, AWQ 4-bit)
    python -m benchmarks.cuda_bench --model DIR_OR_NAME --prompt 128 512 --decode 128
    python -m benchmarks.cuda_bench --synthetic /tmp/llama7b # Llama-2-7B-shaped random AWQ (benchmarks/synth.py,
                                                             # ~3.9 GB written once)
    python -m benchmarks.cuda_bench --device cpu             # the same measurement on the CPU backend

Needs a GPU and `pip install 'awqinfer[cuda]' 'numba-cuda[cu12]'` (or [cu13]). A decode
step reads every weight once, plus the KV cache so far: its bytes divided by the
step's time is the bandwidth achieved; divided by the GPU's peak (memory clock x bus
width, or --bandwidth-gbs) it is the fraction of the bound. Kernels are compiled by a
warm-up pass first, so compile time is not counted.

Status: written without a GPU (the CUDA kernels are tested under numba-cuda's
simulator, which says nothing about speed); no figure from it has been recorded yet.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

import awqinfer
from awqinfer.engine.model import Model


def device_bytes(obj, seen=None) -> int:
    """Bytes of every device (or, on the CPU, numpy) array reachable through dataclass fields and lists."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if hasattr(obj, "copy_to_host") or isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, (list, tuple)):
        return sum(device_bytes(o, seen) for o in obj)
    if dataclasses.is_dataclass(obj):
        return sum(device_bytes(getattr(obj, f.name), seen) for f in dataclasses.fields(obj))
    return 0


def weight_bytes_per_token(weights) -> int:
    """What one decode step reads: the layers, the final norm and lm_head (the embedding row is negligible)."""
    seen = set()
    return device_bytes(weights.layers, seen) + device_bytes(weights.norm, seen) + device_bytes(weights.lm_head, seen)


def peak_bandwidth(args) -> tuple[float | None, str]:
    """(bytes/s, where it came from) of the GPU's memory: --bandwidth-gbs, else clock x bus width."""
    if args.bandwidth_gbs:
        return args.bandwidth_gbs * 1e9, "--bandwidth-gbs"
    if args.device != "cuda":
        return None, "not measured for the CPU here (see docs/PERFORMANCE.md)"
    from numba import cuda

    dev = cuda.get_current_device()
    try:  # kHz and bits; double data rate
        return 2.0 * dev.MEMORY_CLOCK_RATE * 1e3 * dev.GLOBAL_MEMORY_BUS_WIDTH / 8, f"{dev.name}: clock x bus width"
    except Exception as e:  # noqa: BLE001  (attributes missing from a driver/bindings version)
        return None, f"unknown ({type(e).__name__}); pass --bandwidth-gbs (H100 SXM 3350, PCIe 2000, H200 4800)"


def sync(device: str) -> None:
    if device == "cuda":
        from numba import cuda

        cuda.synchronize()


def median_time(fn, device: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint directory or model name (default: the embedded default)")
    ap.add_argument("--synthetic", metavar="DIR", default=None,
                    help="benchmark a Llama-2-7B-shaped random AWQ checkpoint, written to DIR if not there yet")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--prompt", type=int, nargs="+", default=[128, 512], help="prefill lengths to time")
    ap.add_argument("--decode", type=int, default=128, help="decode steps to time")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bandwidth-gbs", type=float, default=None, help="the GPU's peak memory bandwidth, GB/s")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    if args.synthetic:
        from .synth import LLAMA2_7B, write_checkpoint

        if not (Path(args.synthetic) / "model.safetensors").exists():
            write_checkpoint(Path(args.synthetic), LLAMA2_7B)
    t = time.perf_counter()
    if args.synthetic:  # weights and config only, no tokenizer: the model without an LLM around it
        model, name = Model.load(args.synthetic, args.device), f"synthetic Llama-2-7B shape ({args.synthetic})"
    else:
        llm = awqinfer.load(args.model, device=args.device)
        model, name = llm.model, llm.name
    load_s = time.perf_counter() - t
    c = model.config
    vocab = c.vocab_size
    rng = np.random.default_rng(0)
    capacity = max(*args.prompt, 16) + args.decode + 1

    # warm-up: compiles every kernel for both the prefill (T > 1) and the decode (T = 1) shapes
    cache = model.new_cache(capacity)
    model.forward(rng.integers(0, vocab, 8), cache, last_only=True)
    model.forward([1], cache, last_only=True)

    result = {"device": args.device, "model": name, "load_s": round(load_s, 2), "prefill": {}}
    for n in args.prompt:
        ids = rng.integers(0, vocab, n)

        def prefill():
            cache.pos = 0  # forget the sequence, keep the buffers
            model.forward(ids, cache, last_only=True)

        result["prefill"][n] = round(n / median_time(prefill, args.device, args.repeats), 1)

    cache.pos = 0  # forget the sequence, keep the buffers
    logits = model.forward(rng.integers(0, vocab, 16), cache, last_only=True)
    token = int(logits[0].argmax())
    sync(args.device)
    t = time.perf_counter()
    for _ in range(args.decode):
        token = int(model.forward([token], cache, last_only=True)[0].argmax())  # the logits come back each step
    decode_s = (time.perf_counter() - t) / args.decode
    result["decode_tokens_per_s"] = round(1 / decode_s, 1)

    mean_pos = 16 + args.decode / 2
    kv_bytes = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4 * mean_pos
    step_bytes = weight_bytes_per_token(model.weights) + kv_bytes
    peak, source = peak_bandwidth(args)
    result["bytes_per_decode_step_MB"] = round(step_bytes / 1e6, 3)
    result["achieved_GBps"] = round(step_bytes / decode_s / 1e9, 1)
    result["peak_GBps"] = round(peak / 1e9, 1) if peak else None
    result["peak_source"] = source
    result["fraction_of_bound"] = round(step_bytes / decode_s / peak, 3) if peak else None
    result["bound_tokens_per_s"] = round(peak / step_bytes, 1) if peak else None

    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['model']} on {args.device}: load {result['load_s']} s")
        for n, tps in result["prefill"].items():
            print(f"  prefill {n:5d} tokens: {tps:10.1f} tokens/s")
        print(f"  decode: {result['decode_tokens_per_s']:.1f} tokens/s, {result['bytes_per_decode_step_MB']} MB "
              f"per step, {result['achieved_GBps']} GB/s")
        if peak:
            print(f"  bound: {result['bound_tokens_per_s']} tokens/s at {result['peak_GBps']} GB/s ({source}); "
                  f"decode reaches {100 * result['fraction_of_bound']:.1f}% of it")
        else:
            print(f"  peak bandwidth: {source}")
    return result


if __name__ == "__main__":
    main()
