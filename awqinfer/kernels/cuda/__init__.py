"""CUDA twins of the Numba CPU kernels, through numba-cuda: the same signatures and shape contracts.

    awq.py          awq_gemv / awq_gemm      AWQ 4-bit, kernel layout, shared-memory tiles for the GEMM
    int8.py         int8_gemv / int8_gemm    int8 weight-only, one scale per output
    dense.py        dense_gemv / dense_gemm  f32 nn.Linear layout
    norm.py         rmsnorm
    rope.py         apply_rope
    attention.py    store_kv / attention     over a KV cache kept on the device (online softmax)
    activations.py  silu_mul / add_ / add_bias_ / zeros
    launch.py, tiles.py  launch arithmetic, block reductions, the GEMM tiling

Kernels use only what a GPU compiles: constant-size shared and local arrays, f32/int32
arithmetic, no Python objects, no exceptions. Reductions go through shared memory, so
numba-cuda's simulator (NUMBA_ENABLE_CUDASIM=1) runs the very same code: that is how
the tests check them on machines without a GPU. Like the CPU kernels these know nothing
of the engine; engine/model/cuda.py gathers them into a Backend, and a CPU run never
imports them.
"""
