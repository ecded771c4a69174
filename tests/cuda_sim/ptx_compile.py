"""Every CUDA kernel compiles to PTX for a real GPU (sm_90, the H100): no GPU needed, only NVVM.

The simulator runs kernels as Python, so it cannot tell whether numba-cuda would
compile them; this does, for the argument types the backend launches them with.
Run by tests/test_cuda.py in a child process (without NUMBA_ENABLE_CUDASIM); skipped
where the CUDA compiler libraries are absent (pip install "cuda-toolkit[nvvm,nvrtc]==13.*").
"""

import os

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("compiling to PTX needs the real numba-cuda target, not the simulator", allow_module_level=True)
pytest.importorskip("numba_cuda", reason="numba-cuda is not installed: pip install -e '.[cuda]'")

from numba import cuda  # noqa: E402
from numba.core import types  # noqa: E402

try:
    from numba.cuda.cudadrv import nvvm

    nvvm.NVVM()
except Exception as e:  # noqa: BLE001
    pytest.skip(f"the CUDA compiler library NVVM is not available: {e}", allow_module_level=True)

from awqinfer.kernels.cuda import activations, attention, awq, dense, int8, norm, rope  # noqa: E402


def arr(dtype, ndim):
    return types.Array(dtype, ndim, "C")


f32, i64 = types.float32, types.int64
V, M, M3 = arr(f32, 1), arr(f32, 2), arr(f32, 3)
KERNELS = {
    "awq_gemv": (awq._awq_gemv, (V, arr(types.int32, 2), M, M, V)),
    "awq_gemm": (awq._awq_gemm, (M, arr(types.int32, 2), M, M, M)),
    "dense_gemv": (dense._dense_gemv, (V, M, V)),
    "dense_gemm": (dense.scaled_gemm, (M, M, V, M)),
    "int8_gemv": (int8._int8_gemv, (V, arr(types.int8, 2), V, V)),
    "int8_gemm": (dense.scaled_gemm, (M, arr(types.int8, 2), V, M)),
    "rmsnorm": (norm._rmsnorm, (M, V, f32, M)),
    "apply_rope": (rope._apply_rope, (M, M, M, i64, i64)),
    "store_kv": (attention._store_kv, (M, M3, M3, i64, i64)),
    "attention": (attention._attention, (M, M3, M3, i64, i64, M)),
    "silu_mul": (activations._silu_mul, (M, M)),
    "add_": (activations._add_, (M, M)),
    "add_bias_": (activations._add_bias_, (M, V)),
    "fill": (activations._fill, (V, f32)),
}


@pytest.fixture(autouse=True)
def no_device_needed(monkeypatch):
    """Device functions are compiled for the current device's compute capability; there is none here."""
    import numba.cuda.dispatcher as dispatcher

    class Device:
        compute_capability = (9, 0)

    monkeypatch.setattr(dispatcher, "get_current_device", lambda: Device())


@pytest.mark.parametrize("cc", [(9, 0)])  # H100; device functions follow the fake device above
@pytest.mark.parametrize("name", KERNELS)
def test_kernel_compiles_to_ptx(name, cc):
    kernel, signature = KERNELS[name]
    ptx, _ = cuda.compile_ptx(kernel.py_func, signature, fastmath=True, cc=cc)
    assert f".target sm_{cc[0]}{cc[1]}" in ptx
    assert ".entry" in ptx
