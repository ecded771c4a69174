"""Dense f32 matmuls on the GPU in the nn.Linear layout (weight (N, K), y = x @ W.T), as kernels/dense.py."""

from __future__ import annotations

import numpy as np
from numba import cuda

from .launch import gemv_launch, store_row_sum
from .tiles import (THREADS, TILE_K, TILE_N, TILE_T, TOKENS_PER_THREAD, W_TILE, X_TILE, gemm_launch,
                    load_x_tile, multiply_tiles, store_tile)


@cuda.jit(fastmath=True)
def _dense_gemv(x, weight, out):
    n_out, k = weight.shape
    n = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
    acc = np.float32(0.0)
    if n < n_out:
        for i in range(cuda.threadIdx.x, k, cuda.blockDim.x):
            acc += x[i] * weight[n, i]
    store_row_sum(acc, out, n, n_out)


def dense_gemv(x, weight, out):
    """y = W x for one token. x (K,) f32; weight (N, K) f32; out (N,) f32."""
    grid, block = gemv_launch(weight.shape[0], weight.shape[1], 4)
    _dense_gemv[grid, block](x, weight, out)


@cuda.jit(device=True)
def load_w_tile(weight, w_tile, n0, k0, tid):
    """w_tile[k, n] = f32(weight[n0 + n, k0 + k]), zeros outside; consecutive threads read along K."""
    n_out, k = weight.shape
    for e in range(TILE_N * TILE_K // THREADS):
        idx = e * THREADS + tid
        row = idx // TILE_K
        kk = idx % TILE_K
        v = np.float32(0.0)
        if n0 + row < n_out and k0 + kk < k:
            v = np.float32(weight[n0 + row, k0 + kk])
        w_tile[kk, row] = v


@cuda.jit(fastmath=True)
def scaled_gemm(x, weight, scales, out):
    """out = (X W^T) * scales[n] for float or int8 weight (N, K); an empty ``scales`` means no scale.

    x (T, K) f32; weight (N, K) f32 or int8, each tile widened to f32 once in shared memory;
    scales (N,) or (0,) f32; out (T, N) f32. The int8 kernels share this one.
    """
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    tid = ty * TILE_N + tx
    n0 = cuda.blockIdx.x * TILE_N
    t0 = cuda.blockIdx.y * TILE_T
    w_tile = cuda.shared.array(W_TILE, np.float32)
    x_tile = cuda.shared.array(X_TILE, np.float32)
    acc = cuda.local.array(TOKENS_PER_THREAD, np.float32)
    for r in range(TOKENS_PER_THREAD):
        acc[r] = 0.0
    for k0 in range(0, weight.shape[1], TILE_K):
        load_w_tile(weight, w_tile, n0, k0, tid)
        load_x_tile(x, x_tile, t0, k0, tid)
        cuda.syncthreads()
        multiply_tiles(x_tile, w_tile, acc, tx, ty)
        cuda.syncthreads()
    scale = np.float32(1.0)
    if scales.shape[0] > 0 and n0 + tx < weight.shape[0]:
        scale = scales[n0 + tx]
    store_tile(acc, out, t0, n0, tx, ty, scale)


def dense_gemm(x, weight, out):
    """Y = X W^T for a prompt. x (T, K) f32; weight (N, K) f32; out (T, N) f32."""
    grid, block = gemm_launch(x.shape[0], weight.shape[0])
    scaled_gemm[grid, block](x, weight, out[0, :0], out)  # out[0, :0]: an empty device view, no scale
