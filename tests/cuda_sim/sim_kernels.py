"""Each CUDA kernel against its Numba CPU twin and a float64 numpy reference, on tiny shapes.

Shapes are chosen to hit partial tiles and blocks (T, N, K not multiples of the tile,
N not a multiple of the rows per block, lanes with uneven work) and group boundaries
(AWQ group sizes 8..128, one group spanning several K steps, several groups per step).
Run under the simulator by tests/test_cuda.py; see simulated.py.
"""

import numpy as np
import pytest

import simulated  # noqa: F401  (skips without a device; tunes the simulator)
from numba import cuda

from awqinfer.engine.model.linear import quantize_int8
from awqinfer.errors import DeviceError
from awqinfer.kernels import activations, attention, awq, dense, int8, norm, rope
from awqinfer.kernels.cuda import activations as cu_activations
from awqinfer.kernels.cuda import attention as cu_attention
from awqinfer.kernels.cuda import awq as cu_awq
from awqinfer.kernels.cuda import dense as cu_dense
from awqinfer.kernels.cuda import int8 as cu_int8
from awqinfer.kernels.cuda import norm as cu_norm
from awqinfer.kernels.cuda import rope as cu_rope
from oracle import int8_weight, kernel_layout_weight

RTOL, ATOL = 2e-5, 2e-5  # fp32: same sums in another order


def on_device(*arrays):
    return [cuda.to_device(np.ascontiguousarray(a)) for a in arrays]


def close(got, want, scale=1.0):
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL * scale)


def awq_weights(rng, n, k, group):
    """Random kernel-layout AWQ weights (every nibble value, negative words) and their f32 dequantisation."""
    qweight = rng.integers(-2**31, 2**31, size=(n, k // 8), dtype=np.int64).astype(np.int32)
    scales = rng.uniform(0.001, 0.05, size=(n, k // group)).astype(np.float32)
    zeros = rng.integers(0, 16, size=scales.shape).astype(np.uint8)
    w = kernel_layout_weight(qweight, scales, zeros).astype(np.float32)
    return qweight, scales, zeros, w


# (N, K, group): lanes per row 4, 32 (40 words: 8 lanes do 2), 16, 4 (6 words: uneven), 8 (group = 1 word)
GEMV_SHAPES = [(24, 64, 32), (40, 320, 64), (12, 256, 128), (16, 48, 16), (8, 96, 8)]
# (T, N, K, group): partial N tile + one group per K step; partial T tile + partial K step + 4 groups
# per step; one group over 2 K steps; one group over 4 K steps
GEMM_SHAPES = [(5, 72, 96, 32), (33, 16, 40, 8), (3, 24, 192, 64), (2, 8, 128, 128)]


@pytest.mark.parametrize("n,k,group", GEMV_SHAPES)
def test_awq_gemv(n, k, group):
    rng = np.random.default_rng(n * k)
    qweight, scales, zeros, w = awq_weights(rng, n, k, group)
    x = rng.standard_normal(k).astype(np.float32)
    cpu = np.empty(n, np.float32)
    awq.awq_gemv(x, qweight, scales, zeros, cpu)
    out = cuda.device_array(n, np.float32)
    cu_awq.awq_gemv(*on_device(x, qweight, scales, zeros), out)
    got = out.copy_to_host()
    scale = np.abs(w).max() * np.abs(x).sum()
    close(got, cpu, scale)
    close(got, w.astype(np.float64) @ x.astype(np.float64), scale)


@pytest.mark.parametrize("t,n,k,group", GEMM_SHAPES)
def test_awq_gemm(t, n, k, group):
    rng = np.random.default_rng(t * n * k)
    qweight, scales, zeros, w = awq_weights(rng, n, k, group)
    x = rng.standard_normal((t, k)).astype(np.float32)
    cpu = np.empty((t, n), np.float32)
    awq.awq_gemm(x, qweight, scales, zeros, cpu)
    out = cuda.device_array((t, n), np.float32)
    cu_awq.awq_gemm(*on_device(x, qweight, scales, zeros), out)
    got = out.copy_to_host()
    scale = np.abs(w).max() * np.abs(x).sum(axis=1).max()
    close(got, cpu, scale)
    close(got, x.astype(np.float64) @ w.T.astype(np.float64), scale)


@pytest.mark.parametrize("n,k", [(24, 40), (9, 300), (33, 7)])
def test_dense_gemv(n, k):
    rng = np.random.default_rng(n + k)
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal(k).astype(np.float32)
    cpu = np.empty(n, np.float32)
    dense.dense_gemv(x, w, cpu)
    out = cuda.device_array(n, np.float32)
    cu_dense.dense_gemv(*on_device(x, w), out)
    close(out.copy_to_host(), cpu, np.sqrt(k))
    close(out.copy_to_host(), w.astype(np.float64) @ x, np.sqrt(k))


@pytest.mark.parametrize("t,n,k", [(5, 72, 40), (33, 10, 70)])
def test_dense_gemm(t, n, k):
    rng = np.random.default_rng(t + n + k)
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((t, k)).astype(np.float32)
    cpu = np.empty((t, n), np.float32)
    dense.dense_gemm(x, w, cpu)
    out = cuda.device_array((t, n), np.float32)
    cu_dense.dense_gemm(*on_device(x, w), out)
    close(out.copy_to_host(), cpu, np.sqrt(k))
    close(out.copy_to_host(), x.astype(np.float64) @ w.T, np.sqrt(k))


def int8_weights(rng, n, k):
    q, s = quantize_int8(rng.standard_normal((n, k)).astype(np.float32))
    return q, s, int8_weight(q, s)


@pytest.mark.parametrize("n,k", [(20, 100), (6, 9)])
def test_int8_gemv(n, k):
    rng = np.random.default_rng(n + k)
    q, s, w = int8_weights(rng, n, k)
    x = rng.standard_normal(k).astype(np.float32)
    cpu = np.empty(n, np.float32)
    int8.int8_gemv(x, q, s, cpu)
    out = cuda.device_array(n, np.float32)
    cu_int8.int8_gemv(*on_device(x, q, s), out)
    close(out.copy_to_host(), cpu, np.sqrt(k))
    close(out.copy_to_host(), w.astype(np.float64) @ x, np.sqrt(k))


@pytest.mark.parametrize("t,n,k", [(5, 70, 72), (33, 9, 33)])
def test_int8_gemm(t, n, k):
    rng = np.random.default_rng(t + n + k)
    q, s, w = int8_weights(rng, n, k)
    x = rng.standard_normal((t, k)).astype(np.float32)
    cpu = np.empty((t, n), np.float32)
    int8.int8_gemm(x, q, s, cpu)
    out = cuda.device_array((t, n), np.float32)
    cu_int8.int8_gemm(*on_device(x, q, s), out)
    close(out.copy_to_host(), cpu, np.sqrt(k))
    close(out.copy_to_host(), x.astype(np.float64) @ w.T.astype(np.float64), np.sqrt(k))


@pytest.mark.parametrize("t,h,in_place", [(3, 48, False), (2, 600, True)])
def test_rmsnorm(t, h, in_place):
    rng = np.random.default_rng(h)
    x = rng.standard_normal((t, h)).astype(np.float32) * 3
    weight = rng.uniform(0.5, 1.5, h).astype(np.float32)
    cpu = np.empty_like(x)
    norm.rmsnorm(x, weight, 1e-5, cpu)
    dx, dw = on_device(x, weight)
    out = dx if in_place else cuda.device_array((t, h), np.float32)
    cu_norm.rmsnorm(dx, dw, 1e-5, out)
    ref = x / np.sqrt((x.astype(np.float64) ** 2).mean(axis=1, keepdims=True) + 1e-5) * weight
    close(out.copy_to_host(), cpu)
    close(out.copy_to_host(), ref)


@pytest.mark.parametrize("head_dim", [16, 8])
def test_apply_rope(head_dim):
    rng = np.random.default_rng(head_dim)
    t, heads, rotated = 3, 4, 3  # 2 q heads + 1 k head rotated, the v head left alone
    qkv = rng.standard_normal((t, heads * head_dim)).astype(np.float32)
    angles = rng.uniform(0, 6, (t, head_dim // 2))
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    cpu = qkv.copy()
    rope.apply_rope(cpu, cos, sin, rotated, head_dim)
    dq = cuda.to_device(qkv)
    cu_rope.apply_rope(dq, *on_device(cos, sin), rotated, head_dim)
    got = dq.copy_to_host()
    close(got, cpu)
    np.testing.assert_array_equal(got[:, rotated * head_dim:], qkv[:, rotated * head_dim:])


def run_attention(qkv, k_cache, v_cache, start, n_heads, dk, dv):
    """CPU and CUDA store_kv + attention for one step; returns (cpu out, cuda out)."""
    t = qkv.shape[0]
    dim = k_cache.shape[2]
    attention.store_kv(qkv, k_cache, v_cache, start, n_heads)
    cpu = np.empty((t, n_heads * dim), np.float32)
    attention.attention(qkv, k_cache, v_cache, start, n_heads, cpu)
    dq = cuda.to_device(qkv)
    cu_attention.store_kv(dq, dk, dv, start, n_heads)
    out = cuda.device_array((t, n_heads * dim), np.float32)
    cu_attention.attention(dq, dk, dv, start, n_heads, out)
    close(dk.copy_to_host(), k_cache)
    close(dv.copy_to_host(), v_cache)
    return cpu, out.copy_to_host()


def reference_attention(qkv, k_cache, v_cache, start, n_heads):
    t = qkv.shape[0]
    n_kv, _, dim = k_cache.shape
    out = np.empty((t, n_heads * dim))
    for i in range(t):
        for h in range(n_heads):
            kv = h // (n_heads // n_kv)
            q = qkv[i, h * dim:(h + 1) * dim].astype(np.float64)
            s = k_cache[kv, :start + i + 1] @ q / np.sqrt(dim)
            p = np.exp(s - s.max())
            out[i, h * dim:(h + 1) * dim] = p / p.sum() @ v_cache[kv, :start + i + 1]
    return out


def test_attention_prefill_then_decode_gqa():
    rng = np.random.default_rng(1)
    n_heads, n_kv, dim, capacity = 4, 2, 16, 12
    k_cache = np.zeros((n_kv, capacity, dim), np.float32)
    v_cache = np.zeros_like(k_cache)
    dk, dv = on_device(k_cache, v_cache)
    start = 0
    for t in (5, 1, 1):  # a prompt, then two generated tokens
        qkv = rng.standard_normal((t, (n_heads + 2 * n_kv) * dim)).astype(np.float32)
        cpu, got = run_attention(qkv, k_cache, v_cache, start, n_heads, dk, dv)
        close(got, cpu)
        close(got, reference_attention(qkv, k_cache, v_cache, start, n_heads))
        start += t


def test_attention_over_several_chunks():
    """start + T > 128 positions: the online softmax carries max and sum across chunks."""
    rng = np.random.default_rng(2)
    n_heads, n_kv, dim, capacity, start = 2, 1, 8, 140, 135
    k_cache = rng.standard_normal((n_kv, capacity, dim)).astype(np.float32) * 2  # a filled history
    v_cache = rng.standard_normal((n_kv, capacity, dim)).astype(np.float32)
    k_cache[:, 131] *= 4  # the largest scores arrive in the second chunk: earlier sums get rescaled
    dk, dv = on_device(k_cache, v_cache)
    qkv = rng.standard_normal((2, (n_heads + 2 * n_kv) * dim)).astype(np.float32)
    cpu, got = run_attention(qkv, k_cache, v_cache, start, n_heads, dk, dv)
    close(got, cpu)
    close(got, reference_attention(qkv, k_cache, v_cache, start, n_heads))


def test_attention_rejects_heads_larger_than_its_shared_memory():
    dk = cuda.device_array((1, 2, 512), np.float32)
    with pytest.raises(DeviceError, match="head_dim 512"):
        cu_attention.attention(cuda.device_array((1, 3 * 512), np.float32), dk, dk, 0, 1,
                               cuda.device_array((1, 512), np.float32))


def test_elementwise():
    rng = np.random.default_rng(3)
    t, i = 3, 50  # 150 items: one full block and a partial one
    gate_up = rng.standard_normal((t, 2 * i)).astype(np.float32) * 4
    cpu = np.empty((t, i), np.float32)
    activations.silu_mul(gate_up, cpu)
    out = cuda.device_array((t, i), np.float32)
    cu_activations.silu_mul(cuda.to_device(gate_up), out)
    close(out.copy_to_host(), cpu, 4)
    g, u = gate_up[:, :i].astype(np.float64), gate_up[:, i:]
    close(out.copy_to_host(), g / (1 + np.exp(-g)) * u, 4)

    x, y = rng.standard_normal((2, t, 70)).astype(np.float32)
    dx, dy = on_device(x, y)
    cu_activations.add_(dx, dy)
    close(dx.copy_to_host(), x + y)
    bias = rng.standard_normal(70).astype(np.float32)
    cu_activations.add_bias_(dx, cuda.to_device(bias))
    close(dx.copy_to_host(), x + y + bias)


@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (129,)])
def test_zeros_are_zero(shape, monkeypatch):
    """zeros() clears the memory on the device: hand it memory full of junk."""
    junk = lambda shape, dtype: cuda.to_device(np.full(shape, 7.0, dtype))
    monkeypatch.setattr(cuda, "device_array", junk)
    np.testing.assert_array_equal(cu_activations.zeros(shape).copy_to_host(), np.zeros(shape, np.float32))
