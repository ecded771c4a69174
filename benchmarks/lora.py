"""The cost of LoRA adapters in decode: ``python -m benchmarks.lora [--tokens N] [--repeats R]``.

Two raw loops on the default model (SmolLM2-135M, AWQ 4-bit), each run without adapters and
with rank-8 adapters on all seven projections, interleaved repeat by repeat:

    1 stream     one sequence, token by token (the compiled step, B = 1): tokens/s
    8 streams    ``Model.forward_batch`` over 8 sequences, with 4 different adapters (2 rows
                 each) against none: aggregate tokens/s of the batch

The batch without adapters and the batch with them step alternately, one step each, so a
busy neighbour (the machine is shared) slows both alike.

The adapters are random, written in PEFT's file format (adapter_config.json +
adapter_model.safetensors) by this script, and loaded through ``awqinfer.load(lora_dir=...)``
as a user's would be. Prints a markdown section for benchmarks/RESULTS.md with the load average
before and after (the machine is shared: quote the ratios, which are measured side by side).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

import awqinfer

MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")


def write_adapter(directory: Path, config, rank: int, seed: int) -> None:
    """A random rank-``rank`` LoRA on all seven projections of ``config``'s model, as peft saves one."""
    c, rng = config, np.random.default_rng(seed)
    shapes = {"q_proj": (c.q_size, c.hidden_size), "k_proj": (c.kv_size, c.hidden_size),
              "v_proj": (c.kv_size, c.hidden_size), "o_proj": (c.hidden_size, c.q_size),
              "gate_proj": (c.intermediate_size, c.hidden_size), "up_proj": (c.intermediate_size, c.hidden_size),
              "down_proj": (c.hidden_size, c.intermediate_size)}
    tensors = {}
    for l in range(c.num_hidden_layers):
        for module in MODULES:
            n_out, n_in = shapes[module.rsplit(".", 1)[1]]
            prefix = f"base_model.model.model.layers.{l}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = (rng.standard_normal((rank, n_in)) / np.sqrt(n_in)).astype(np.float32)
            tensors[f"{prefix}.lora_B.weight"] = (rng.standard_normal((n_out, rank)) * 0.01).astype(np.float32)
    directory.mkdir(parents=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    (directory / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0, "bias": "none",
        "target_modules": [m.rsplit(".", 1)[1] for m in MODULES], "use_rslora": False, "use_dora": False}))


def paired(model, adapters, rows: int, tokens: int) -> tuple[float, float]:
    """Aggregate tokens/s of ``rows`` sequences stepped ``tokens`` times without adapters and with ``adapters``.

    The two batches step alternately, one step each, so that a busy neighbour slows both alike.
    """
    timed = {}
    for label, names in (("none", None), ("lora", adapters)):
        caches = [model.new_cache(tokens + 16) for _ in range(rows)]
        for b, cache in enumerate(caches):
            model.forward(list(range(10 + b, 26 + b)), cache, adapter=names[b] if names else None)
        timed[label] = [caches, names, np.arange(rows, dtype=np.int64) + 100, 0.0]
    for _ in range(tokens):
        for entry in timed.values():
            caches, names, ids, _ = entry
            start = time.perf_counter()
            logits = model.forward_batch(ids, caches, adapters=names)
            entry[3] += time.perf_counter() - start
            entry[2] = logits.argmax(axis=1)
    for caches, *_ in timed.values():
        for cache in caches:
            cache.close()
    model.forget_caches()
    return rows * tokens / timed["none"][3], rows * tokens / timed["lora"][3]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=64, help="decode steps per measurement (default 64)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    p.add_argument("--rank", type=int, default=8, help="the adapters' rank (default 8)")
    p.add_argument("--threads", type=int, default=1,
                   help="kernel threads, fixed (default 1): the thread chooser's probes would land on one side")
    args = p.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        config = awqinfer.load().model.config
        for i in range(4):
            write_adapter(Path(tmp) / f"a{i}", config, args.rank, seed=i)
        llm = awqinfer.load(lora_dir=tmp, threads=args.threads)
    model = llm.model
    runs = {"1 stream (one adapter)": ["a0"], "8 streams (4 adapters x 2)": ["a0", "a1", "a2", "a3"] * 2}
    paired(model, runs["8 streams (4 adapters x 2)"], 8, 4)  # compile / warm up
    found = {case: ([], []) for case in runs}
    for _ in range(args.repeats):
        for case, names in runs.items():
            none, lora = paired(model, names, len(names), args.tokens)
            found[case][0].append(none)
            found[case][1].append(lora)
    load_after = os.getloadavg()
    print(f"## LoRA adapters in decode (`python -m benchmarks.lora --tokens {args.tokens} --repeats "
          f"{args.repeats}`)\n")
    print(f"Default model, rank-{args.rank} adapters on all seven projections, {args.threads} kernel thread(s), "
          f"raw loops (greedy), tokens/s; "
          f"alternate steps, medians over {args.repeats} repeats, min-max in brackets. Load average before / after: "
          f"{', '.join(f'{x:.1f}' for x in load_before)} / {', '.join(f'{x:.1f}' for x in load_after)}.\n")
    print("| decode | no adapter | with adapters | with / without |\n| --- | --- | --- | --- |")
    fmt = lambda xs: f"{np.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})"
    for case, (base, lora) in found.items():
        print(f"| {case} | {fmt(base)} | {fmt(lora)} | {np.median(lora) / np.median(base):.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
