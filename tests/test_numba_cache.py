"""The kernels compute the same bits in the process that compiles them and in every process that loads them
from Numba's on-disk cache (kernels/fastmath.py says why that needed care)."""

import os
import subprocess
import sys

import numpy as np

CHILD = """
import sys
import numpy as np
from awqinfer.engine.model import Model

rows = []
for directory in sys.argv[2:]:
    model = Model.load(directory)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, model.config.vocab_size, 9)
    for fast in (True, False):
        cache = model.new_cache(32)
        rows.append(model.forward(list(prompt), cache))  # prefill: the GEMM kernels and prefill attention
        token = int(np.argmax(rows[-1][-1]))
        for _ in range(4):  # decode steps: the compiled step (fast) and the readable one's kernels
            rows.append(model.forward([token], cache, fast=fast))
            token = int(np.argmax(rows[-1][-1]))
np.save(sys.argv[1], np.concatenate([r.reshape(-1) for r in rows]))
"""


def _logits(tmp_path, name: str, numba_cache, models) -> np.ndarray:
    out = tmp_path / f"{name}.npy"
    subprocess.run([sys.executable, "-c", CHILD, str(out), *map(str, models)], check=True, timeout=900,
                   env={**os.environ, "NUMBA_CACHE_DIR": str(numba_cache)})
    return np.load(out)


def test_a_cold_and_a_warm_cache_give_the_same_logits(tmp_path, tiny_llama_awq, tiny_qwen2):
    """A fresh process compiles every kernel into an empty cache; a second one loads them all from it."""
    numba_cache = tmp_path / "numba-cache"
    cold = _logits(tmp_path, "cold", numba_cache, [tiny_llama_awq, tiny_qwen2])
    written = {p.name.split("-")[0] for p in numba_cache.rglob("*.nbi")}  # what the warm process will load
    assert {"attention.attention", "decode.decode_batch", "norm.rmsnorm"} <= written, sorted(written)
    warm = _logits(tmp_path, "warm", numba_cache, [tiny_llama_awq, tiny_qwen2])
    assert np.isfinite(cold).all()
    np.testing.assert_array_equal(warm, cold)
