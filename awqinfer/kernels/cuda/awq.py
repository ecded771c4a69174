"""AWQ 4-bit matmuls on the GPU, on the kernel layout of kernels/awq.py (same signatures).

    qweight int32 (N, K/8): word j of row n holds inputs 8j..8j+7 of output n, input 8j+i in nibble i
    scales f32, zeros u8 (N, G): scale and zero point of each group of K / G inputs

Both read each packed word once and widen it in registers (GEMV) or into a shared f32
tile (GEMM); scale and zero are applied once per word: y += s * sum(x*q) - s*z * sum(x).
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .launch import gemv_launch, store_row_sum
from .tiles import (THREADS, TILE_K, TILE_N, TILE_T, TOKENS_PER_THREAD, W_TILE, X_TILE, gemm_launch,
                    load_x_tile, multiply_tiles, store_tile)

WORDS_PER_TILE = TILE_K // 8  # packed words per row of a K step


@cuda.jit(fastmath=True)
def _awq_gemv(x, qweight, scales, zeros, out):
    n_out, n_words = qweight.shape
    words_per_group = n_words // scales.shape[1]
    n = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
    acc = np.float32(0.0)
    if n < n_out:
        for j in range(cuda.threadIdx.x, n_words, cuda.blockDim.x):
            w = qweight[n, j]
            dot = np.float32(0.0)
            xs = np.float32(0.0)
            for i in range(8):
                xi = x[8 * j + i]
                dot += xi * np.float32((w >> np.int32(4 * i)) & np.int32(15))
                xs += xi
            g = j // words_per_group
            s = scales[n, g]
            acc += s * dot - s * np.float32(zeros[n, g]) * xs
    store_row_sum(acc, out, n, n_out)


def awq_gemv(x, qweight, scales, zeros, out):
    """y = x @ W for one token. x (K,) f32; qweight (N, K/8) int32; scales (N, G) f32; zeros (N, G) u8;
    out (N,) f32."""
    grid, block = gemv_launch(qweight.shape[0], qweight.shape[1], 2)
    _awq_gemv[grid, block](x, qweight, scales, zeros, out)


@cuda.jit(fastmath=True)
def _awq_gemm(x, qweight, scales, zeros, out):
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    tid = ty * TILE_N + tx
    n0 = cuda.blockIdx.x * TILE_N
    t0 = cuda.blockIdx.y * TILE_T
    n_out, n_words = qweight.shape
    words_per_group = n_words // scales.shape[1]
    w_tile = cuda.shared.array(W_TILE, np.float32)
    x_tile = cuda.shared.array(X_TILE, np.float32)
    acc = cuda.local.array(TOKENS_PER_THREAD, np.float32)
    for r in range(TOKENS_PER_THREAD):
        acc[r] = 0.0
    # one packed word per thread: TILE_N rows x WORDS_PER_TILE words = THREADS
    row = tid // WORDS_PER_TILE
    word = tid % WORDS_PER_TILE
    n = n0 + row
    for j0 in range(0, n_words, WORDS_PER_TILE):
        j = j0 + word
        if n < n_out and j < n_words:
            w = qweight[n, j]
            g = j // words_per_group
            s = scales[n, g]
            sz = s * np.float32(zeros[n, g])
            for i in range(8):
                w_tile[8 * word + i, row] = np.float32((w >> np.int32(4 * i)) & np.int32(15)) * s - sz
        else:
            for i in range(8):
                w_tile[8 * word + i, row] = 0.0
        load_x_tile(x, x_tile, t0, 8 * j0, tid)
        cuda.syncthreads()
        multiply_tiles(x_tile, w_tile, acc, tx, ty)
        cuda.syncthreads()
    store_tile(acc, out, t0, n0, tx, ty, np.float32(1.0))


def awq_gemm(x, qweight, scales, zeros, out):
    """Y = X @ W for a prompt. x (T, K) f32; qweight (N, K/8) int32; scales (N, G) f32; zeros (N, G) u8;
    out (T, N) f32."""
    grid, block = gemm_launch(x.shape[0], qweight.shape[0])
    _awq_gemm[grid, block](x, qweight, scales, zeros, out)


assert TILE_N * WORDS_PER_TILE == THREADS, "the AWQ GEMM loads one packed word per thread"
