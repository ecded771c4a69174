"""A Llama-2-7B-shaped AWQ checkpoint of random weights, and its measurement in a fresh process.

The checkpoint holds AutoAWQ "gemm" tensors (qweight/qzeros int32, scales fp16, as
tests/checkpoints.py writes them) whose packed int32 words are random bytes: every
nibble is a valid 4-bit value, so no packing pass is needed and ~3.9 GB are written
in seconds. Tensors are streamed one at a time into a single safetensors file.

``python -m benchmarks.synth DIR N`` loads DIR in a fresh process, runs N decode
steps and prints one JSON line: load seconds, per-step seconds, RSS after load, and
the model's in-memory weight bytes read per token (what the bandwidth bound divides).
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np

LLAMA2_7B = dict(hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32, vocab=32000, group=128)
TINY = dict(hidden=128, intermediate=256, layers=2, heads=4, kv_heads=2, vocab=512, group=64)  # smoke test


def config_json(d: dict) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": d["vocab"], "hidden_size": d["hidden"], "intermediate_size": d["intermediate"],
        "num_hidden_layers": d["layers"], "num_attention_heads": d["heads"], "num_key_value_heads": d["kv_heads"],
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "hidden_act": "silu", "rope_theta": 10000.0,
        "tie_word_embeddings": False, "torch_dtype": "float16", "bos_token_id": 1, "eos_token_id": 2,
        "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": d["group"], "zero_point": True,
                                "version": "gemm", "modules_to_not_convert": None},
    }


def _tensors(d: dict):
    """(name, dtype, shape, make) for every tensor, make() -> the array, created only when written."""
    H, I, V, g = d["hidden"], d["intermediate"], d["vocab"], d["group"]
    D = H // d["heads"]
    kv = d["kv_heads"] * D
    rng = np.random.default_rng(0)
    words = lambda *shape: lambda: np.frombuffer(rng.bytes(4 * int(np.prod(shape))), np.int32).reshape(shape)
    half = lambda *shape, lo=-0.05, hi=0.05: lambda: rng.uniform(lo, hi, shape).astype(np.float16)
    ones = lambda n: lambda: (1 + rng.uniform(-0.1, 0.1, n)).astype(np.float16)
    yield "model.embed_tokens.weight", "F16", (V, H), half(V, H, lo=-1, hi=1)
    for l in range(d["layers"]):
        p = f"model.layers.{l}."
        yield p + "input_layernorm.weight", "F16", (H,), ones(H)
        yield p + "post_attention_layernorm.weight", "F16", (H,), ones(H)
        for name, (n_in, n_out) in {"self_attn.q_proj": (H, H), "self_attn.k_proj": (H, kv),
                                    "self_attn.v_proj": (H, kv), "self_attn.o_proj": (H, H),
                                    "mlp.gate_proj": (H, I), "mlp.up_proj": (H, I), "mlp.down_proj": (I, H)}.items():
            yield p + name + ".qweight", "I32", (n_in, n_out // 8), words(n_in, n_out // 8)
            yield p + name + ".qzeros", "I32", (n_in // g, n_out // 8), words(n_in // g, n_out // 8)
            yield p + name + ".scales", "F16", (n_in // g, n_out), half(n_in // g, n_out, lo=0.0005, hi=0.003)
    yield "model.norm.weight", "F16", (H,), ones(H)
    yield "lm_head.weight", "F16", (V, H), half(V, H)


def write_checkpoint(directory: Path, dims: dict = LLAMA2_7B) -> int:
    """Write config.json and model.safetensors into ``directory``; return the file's bytes."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config_json(dims), indent=2))
    size = {"F16": 2, "I32": 4}
    header, offset, makers = {}, 0, []
    for name, dtype, shape, make in _tensors(dims):
        n = size[dtype] * int(np.prod(shape))
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
        makers.append(make)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path = directory / "model.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for make in makers:
            f.write(np.ascontiguousarray(make()).tobytes())
    return path.stat().st_size


def weight_bytes_per_token(model) -> int:
    """Bytes of weights one decode step reads: every layer's matrices, the lm_head, one embedding row."""
    w = model.weights
    total = 0
    for stack in w.stacks.values():
        total += sum(a.nbytes for a in vars(stack).values() if isinstance(a, np.ndarray))
    total += w.norms.nbytes
    state = model._decode_state
    if state and state.lm_head_int8:  # the int8 screen, then RESCORE exact rows as stored
        from awqinfer.kernels.decode import RESCORE

        total += state.head.q8.nbytes + state.head.scales.nbytes + RESCORE * state.head.rows[0].nbytes
    else:
        total += state.head.rows.nbytes if state else sum(a.nbytes for a in vars(w.lm_head).values()
                                                          if isinstance(a, np.ndarray))
    return total + w.norm.nbytes + w.embed.table[0].nbytes


def current_rss() -> int:
    """This process's resident set size in bytes (psutil when installed, else /proc)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(directory: str, n_tokens: int, capacity: int = 64) -> dict:
    from awqinfer.engine.model import Model

    t = time.perf_counter()
    model = Model.load(directory)
    load_s = time.perf_counter() - t
    rss_loaded = current_rss()
    cache = model.new_cache(capacity)
    token = 1
    model.forward([token], cache)  # first step: builds the decode state, compiles if the cache is cold
    steps = []
    for _ in range(n_tokens):
        t = time.perf_counter()
        token = int(np.argmax(model.forward([token], cache)[0]))
        steps.append(time.perf_counter() - t)
    return {"load_s": load_s, "steps_s": steps, "rss_after_load": rss_loaded,
            "weight_bytes_per_token": weight_bytes_per_token(model),
            "kv_cache_bytes": cache.k.nbytes + cache.v.nbytes}


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]))))
