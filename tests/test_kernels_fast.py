"""The optimised CPU kernels against plain numpy references (no timing here: benchmarks/ measures)."""

import numpy as np
import pytest

from numba.typed import List

from awqinfer.kernels import awq
from awqinfer.kernels.attention import attention, store_kv
from awqinfer.kernels.decode_attention import ATTN_CHUNK, attend_rows
from awqinfer.kernels.awq import awq_gemm, awq_gemv
from awqinfer.kernels.norm import rmsnorm
from awqinfer.kernels.rope import apply_rope
from oracle import kernel_layout_weight


def _kernel_layout(rng, n, k, group):
    """Random kernel-layout AWQ weights, every nibble value 0..15 (so sign bits are set too)."""
    qweight = rng.integers(-(2**31), 2**31, size=(n, k // 8), dtype=np.int64).astype(np.int32)
    scales = rng.uniform(0.001, 0.05, size=(n, k // group)).astype(np.float32)
    zeros = rng.integers(0, 16, size=(n, k // group)).astype(np.uint8)
    return qweight, scales, zeros


@pytest.mark.parametrize("n,k,group", [(8, 64, 32), (96, 576, 64), (37 * 8, 1536, 64), (64, 1024, 128)])
def test_awq_gemv_matches_numpy(n, k, group):
    rng = np.random.default_rng(n + k)
    qweight, scales, zeros = _kernel_layout(rng, n, k, group)
    x = rng.standard_normal(k).astype(np.float32)
    want = kernel_layout_weight(qweight, scales, zeros) @ x.astype(np.float64)
    out = np.full(n, np.nan, np.float32)
    awq_gemv(x, qweight, scales, zeros, out)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("n_tokens", [2, 7, 33, 70])
def test_awq_gemm_matches_numpy(n_tokens):
    rng = np.random.default_rng(n_tokens)
    n, k, group = 136, 256, 64  # more rows than one tile, not a multiple of it
    qweight, scales, zeros = _kernel_layout(rng, n, k, group)
    w = kernel_layout_weight(qweight, scales, zeros)
    x = rng.standard_normal((n_tokens, k)).astype(np.float32)
    out = np.full((n_tokens, n), np.nan, np.float32)
    awq_gemm(x, qweight, scales, zeros, out)
    want = x.astype(np.float64) @ w.T
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def _attention_reference(q, k, v, n_pos):
    """softmax(q k^T / sqrt(D)) v over positions 0..n_pos-1, in float64. q (H, D); k, v (KV, S, D)."""
    heads, dim = q.shape
    group = heads // k.shape[0]
    out = np.empty((heads, dim))
    for h in range(heads):
        s = k[h // group, :n_pos].astype(np.float64) @ q[h] / np.sqrt(dim)
        p = np.exp(s - s.max())
        out[h] = (p / p.sum()) @ v[h // group, :n_pos]
    return out


@pytest.mark.parametrize("kv_dtype", [np.float32, np.float16])
def test_attend_rows_matches_numpy(kv_dtype):
    """The decode attention of a batch: rows of mixed lengths (one, a few, exactly a chunk, several chunks
    merged), each over its own cache, f32 or f16 (stored as bits)."""
    rng = np.random.default_rng(7)
    heads, kv, dim, layers = 9, 3, 64, 2
    lengths = [1, 5, ATTN_CHUNK, 2 * ATTN_CHUNK + 77]  # positions each row attends to (its own included)
    ks = [rng.standard_normal((layers, kv, n + 3, dim)).astype(kv_dtype) for n in lengths]
    vs = [rng.standard_normal((layers, kv, n + 3, dim)).astype(kv_dtype) for n in lengths]
    stored = lambda a: a.view(np.uint16) if kv_dtype == np.float16 else a
    qkv = rng.standard_normal((len(lengths), (heads + 2 * kv) * dim)).astype(np.float32)
    s_max = max(lengths) + 3
    chunks = -(-s_max // ATTN_CHUNK)
    B = len(lengths)
    scratch = (np.zeros((B, heads, s_max), np.float32), np.zeros((B, heads, chunks, dim), np.float32),
               np.zeros((B, heads, chunks), np.float32), np.zeros((B, heads, chunks), np.float32))
    out = np.full((B, heads * dim), np.nan, np.float32)
    positions = np.array(lengths, np.int64) - 1
    attend_rows(qkv, List([stored(k) for k in ks]), List([stored(v) for v in vs]), 1, positions, *scratch, out)
    for b, n in enumerate(lengths):
        want = _attention_reference(qkv[b, : heads * dim].reshape(heads, dim), ks[b][1].astype(np.float32),
                                    vs[b][1].astype(np.float32), n)
        np.testing.assert_allclose(out[b].reshape(heads, dim), want, rtol=1e-4, atol=1e-5)


def test_f16_kv_elements_round_trip_as_numpy_does():
    """store_kv into a float16 cache rounds as numpy's astype(float16) (to nearest even; beyond range: inf)."""
    x = np.concatenate([np.random.default_rng(0).standard_normal(1000) * 10.0 ** np.arange(-6, 4).repeat(100),
                        [0.0, -0.0, 65504.0, 1e-8, 7e4]]).astype(np.float32)
    qkv = np.stack([np.zeros_like(x), x, -x], axis=1)  # one head of size 1: columns q, k, v
    k, v = np.zeros((1, x.size, 1), np.uint16), np.zeros((1, x.size, 1), np.uint16)
    store_kv(qkv, k, v, 0, 1)
    with np.errstate(over="ignore"):  # 7e4 is beyond float16: inf, as numpy gives
        half = x.astype(np.float16)
    np.testing.assert_array_equal(k.reshape(-1), half.view(np.uint16))
    np.testing.assert_array_equal(v.reshape(-1), (-half).view(np.uint16))


@pytest.mark.parametrize("n_tokens,start", [(1, 0), (5, 0), (4, 9), (40, 3)])
def test_prefill_attention_matches_numpy(n_tokens, start):
    """The Backend's attention kernel: causal, GQA, new tokens after ``start`` cached ones."""
    rng = np.random.default_rng(n_tokens * 100 + start)
    heads, kv, dim, capacity = 6, 2, 16, 64
    k = rng.standard_normal((kv, capacity, dim)).astype(np.float32)
    v = rng.standard_normal((kv, capacity, dim)).astype(np.float32)
    qkv = rng.standard_normal((n_tokens, (heads + 2 * kv) * dim)).astype(np.float32)
    out = np.full((n_tokens, heads * dim), np.nan, np.float32)
    attention(qkv, k, v, start, heads, out)
    for t in range(n_tokens):
        want = _attention_reference(qkv[t, : heads * dim].reshape(heads, dim), k, v, start + t + 1)
        np.testing.assert_allclose(out[t].reshape(heads, dim), want, rtol=1e-4, atol=1e-5)


def test_rmsnorm_and_rope_match_numpy():
    """The norm and RoPE kernels both paths share (decode_batch calls them on its rows)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 96)).astype(np.float32)
    w = rng.standard_normal(96).astype(np.float32)
    out = np.empty_like(x)
    rmsnorm(x, w, 1e-5, out)
    want = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)

    dim, heads, tokens = 16, 5, 2
    v = rng.standard_normal((tokens, heads * dim)).astype(np.float32)
    angles = rng.uniform(-3, 3, (tokens, dim // 2))
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    rotated = v.copy()
    apply_rope(rotated, cos, sin, 3, dim)  # the first 3 heads (q and k), not the v heads
    want = v.reshape(tokens, heads, dim).astype(np.float64).copy()
    a, b = want[:, :3, : dim // 2].copy(), want[:, :3, dim // 2 :].copy()
    want[:, :3, : dim // 2] = a * cos[:, None] - b * sin[:, None]
    want[:, :3, dim // 2 :] = b * cos[:, None] + a * sin[:, None]
    np.testing.assert_allclose(rotated.reshape(tokens, heads, dim), want, rtol=1e-5, atol=1e-6)


def test_prepare_input_layout():
    x = np.arange(128, dtype=np.float32)
    xp = np.empty((8, 16), np.float32)
    xsum = np.empty(2, np.float32)
    awq.awq_prepare_input(x, xp, xsum)
    assert xp[3, 5] == x[8 * 5 + 3]
    np.testing.assert_array_equal(xp.T.reshape(-1), x)
    np.testing.assert_allclose(xsum, [x[:64].sum(), x[64:].sum()])


@pytest.mark.parametrize("n_tokens,n", [(1, 5), (4, 4), (7, 70), (66, 131)])
def test_dense_gemm_and_gemv_match_numpy(n_tokens, n):
    """The blocked prompt matmul, including the edges past multiples of 4 and of the tiles."""
    from awqinfer.kernels.dense import dense_gemm, dense_gemv

    rng = np.random.default_rng(n_tokens * n)
    k = 40
    x = rng.standard_normal((n_tokens, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    want = x.astype(np.float64) @ w.T
    out = np.full((n_tokens, n), np.nan, np.float32)
    dense_gemm(x, w, out)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    one = np.full(n, np.nan, np.float32)
    dense_gemv(x[0], w, one)
    np.testing.assert_allclose(one, want[0], rtol=1e-5, atol=1e-5)


def test_stale_numba_cache_is_dropped_when_any_kernel_source_changes(tmp_path):
    """A cached compiled step must not outlive an edit to a kernel it calls from another file."""
    from awqinfer.kernels import drop_stale_cache

    (tmp_path / "awq.py").write_text("A = 1\n")
    (tmp_path / "decode.py").write_text("B = 1\n")
    cache = tmp_path / "__pycache__"
    assert drop_stale_cache(tmp_path)  # first sight: no fingerprint yet
    (cache / "decode.decode_step-1.py311.nbi").write_bytes(b"index")
    (cache / "decode.decode_step-1.py311.1.nbc").write_bytes(b"code")
    assert not drop_stale_cache(tmp_path)  # nothing changed: the cache stays
    assert len(list(cache.glob("*.nb[ic]"))) == 2
    (tmp_path / "awq.py").write_text("A = 2\n")  # a sibling of decode.py changes
    assert drop_stale_cache(tmp_path)
    assert list(cache.glob("*.nb[ic]")) == []
    assert not drop_stale_cache(tmp_path)


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("n_tokens", [1, 5, 70])
def test_half_gemm_and_gemv_widen_16_bit_weights_exactly(bf16, n_tokens):
    """A 16-bit lm_head kept as stored: the kernels equal numpy on the exactly widened f32 weights."""
    from awqinfer.engine.checkpoint.safetensors import widen
    from awqinfer.engine.model.linear import HalfLinear, stored_linear
    from awqinfer.kernels.dense import dense_gemv, half_gemm

    rng = np.random.default_rng(n_tokens)
    w = rng.standard_normal((131, 96)).astype(np.float32)
    w[0, :4] = [0.0, -0.0, 6e-8, 65504.0] if not bf16 else [0.0, -0.0, 1e-30, 3e38]  # zeros, subnormal, the largest
    bits = (w.view(np.uint32) >> 16).astype(np.uint16) if bf16 else w.astype(np.float16).view(np.uint16)
    exact = widen(bits if bf16 else bits.view(np.float16), bf16).astype(np.float64)
    x = rng.standard_normal((n_tokens, 96)).astype(np.float32)
    x[:, :4] = 0  # the extreme weights must not overflow the sums; they are checked by widening alone
    want = x.astype(np.float64) @ exact.T
    out = np.full((n_tokens, 131), np.nan, np.float32)
    half_gemm(x, bits, bf16, out)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    one = np.full(131, np.nan, np.float32)
    dense_gemv(x[0], bits, one, bf16)
    np.testing.assert_allclose(one, want[0], rtol=1e-5, atol=1e-5 * np.abs(want).max())
    linear = stored_linear(bits if bf16 else bits.view(np.float16), bf16)
    assert isinstance(linear, HalfLinear) and np.shares_memory(linear.bits, bits)
    np.testing.assert_array_equal(linear.rows(0, 131), exact.astype(np.float32))


def test_kernels_called_from_python_release_the_gil():
    """Every compiled CPU kernel drops the GIL while it runs: a server's other threads keep answering."""
    import importlib
    import pkgutil

    from numba.core.registry import CPUDispatcher

    import awqinfer.kernels as package

    checked = 0
    for info in pkgutil.iter_modules(package.__path__):
        if info.ispkg:  # kernels/cuda: device kernels
            continue
        module = importlib.import_module(f"awqinfer.kernels.{info.name}")
        for name, obj in vars(module).items():
            if isinstance(obj, CPUDispatcher) and obj.__module__ == module.__name__ and \
                    obj.targetoptions.get("inline", "never") == "never":
                assert obj.targetoptions.get("nogil"), f"{info.name}.{name} holds the GIL"
                checked += 1
    assert checked >= 20
