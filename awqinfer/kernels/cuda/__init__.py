"""CUDA twins of the Numba CPU kernels, through numba-cuda: the same signatures and shape contracts.

    awq.py          awq_gemv / awq_gemm      AWQ 4-bit, kernel layout, shared-memory tiles for the GEMM
    int8.py         int8_gemv / int8_gemm    int8 weight-only, one scale per output
    dense.py        dense_gemv / dense_gemm  f32 nn.Linear layout
    norm.py         rmsnorm
    rope.py         apply_rope
    attention.py    store_kv / attention     over a KV cache kept on the device (online softmax)
    activations.py  silu_mul / add_ / add_bias_ / zeros
    weights.py      device twins of the Linear classes; upload(ModelWeights) at load
    launch.py, tiles.py  launch arithmetic, block reductions, the GEMM tiling

Kernels use only what a GPU compiles: constant-size shared and local arrays, f32/int32
arithmetic, no Python objects, no exceptions. Reductions go through shared memory, so
numba-cuda's simulator (NUMBA_ENABLE_CUDASIM=1) runs the very same code: that is how
the tests check them on machines without a GPU. Nothing here is imported by a CPU run;
engine/backend.py's get_backend('cuda') is the only way in.
"""

from __future__ import annotations

import functools

import numpy as np

from ...errors import DeviceError


@functools.lru_cache(maxsize=1)
def cuda_backend():
    """The Backend that runs model.py on the GPU; DeviceError names what is missing if it cannot."""
    try:
        from numba import cuda
    except Exception as e:  # numba-cuda present but broken (e.g. a mismatched cuda-bindings)
        raise DeviceError(f"device='cuda': numba-cuda is installed but failed to import: {type(e).__name__}: {e}") from e
    _check_device(cuda)

    from ...engine.backend import Backend
    from . import activations, attention, norm, rope, weights

    return Backend(
        name="cuda",
        rmsnorm=norm.rmsnorm,
        apply_rope=rope.apply_rope,
        store_kv=attention.store_kv,
        attention=attention.attention,
        silu_mul=activations.silu_mul,
        add_=activations.add_,
        empty=lambda shape: cuda.device_array(shape, np.float32),
        zeros=activations.zeros,
        to_device=lambda a: cuda.to_device(np.ascontiguousarray(a)),
        to_host=lambda a: a.copy_to_host(),
        upload=weights.upload,
    )


def _check_device(cuda) -> None:
    """Raise DeviceError unless a GPU and a working compiler are here (the simulator counts as one)."""
    if not cuda.is_available():
        try:
            cuda.current_context()
            reason = "numba-cuda found no CUDA-capable GPU"
        except Exception as e:  # the driver's own words: no libcuda, no device, driver too old
            reason = " ".join(str(e).split()).rstrip(" :") or type(e).__name__
        raise DeviceError(f"device='cuda' needs an NVIDIA GPU and its driver, and none is usable here: {reason}")
    try:
        from .activations import zeros

        zeros((1,)).copy_to_host()  # compiles and runs one kernel
    except Exception as e:
        raise DeviceError(
            f"device='cuda': a GPU is present but a test kernel failed to compile or run "
            f"({type(e).__name__}: {' '.join(str(e).split())}); numba-cuda needs the CUDA compiler "
            "libraries (NVVM, NVRTC) as well: pip install 'numba-cuda[cu12]' (or '[cu13]', matching the driver)"
        ) from e
