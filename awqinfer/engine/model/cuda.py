"""The forward pass on an NVIDIA GPU: the CUDA Backend and device twins of the Linear classes.

``cuda_backend()`` gathers kernels/cuda's twins of the CPU kernels into a Backend, so
forward.py runs unchanged on the device. ``upload(ModelWeights)`` copies every array the
forward pass reads to the GPU once: each projection's stack becomes one (L, ...) device
array per field (each layer's Linear holds a view into it, as on the host), and so do the
norms. The token embedding table stays on the host (a lookup of a few rows happens there;
forward.py then uploads the rows). Nothing here is imported by a CPU run: backend.py's
``get_backend('cuda')`` is the only way in, and turns a failed import into a DeviceError.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
from numba import cuda

from ...errors import DeviceError
from ...kernels.cuda import activations, attention, awq, dense, int8, norm, rope
from .backend import Backend
from .linear import AwqLinear, DenseLinear, HalfLinear, Int8Linear, Linear
from .weights import ModelWeights, layers_of


@functools.lru_cache(maxsize=1)
def cuda_backend() -> Backend:
    """The Backend that runs forward.py on the GPU; DeviceError names what is missing if it cannot."""
    _check_device()
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
        upload=upload,
    )


def _check_device() -> None:
    """Raise DeviceError unless a GPU and a working compiler are here (the simulator counts as one)."""
    if not cuda.is_available():
        try:
            cuda.current_context()
            reason = "numba-cuda found no CUDA-capable GPU"
        except Exception as e:  # the driver's own words: no libcuda, no device, driver too old
            reason = " ".join(str(e).split()).rstrip(" :") or type(e).__name__
        raise DeviceError(f"device='cuda' needs an NVIDIA GPU and its driver, and none is usable here: {reason}")
    try:
        activations.zeros((1,)).copy_to_host()  # compiles and runs one kernel
    except Exception as e:
        raise DeviceError(
            f"device='cuda': a GPU is present but a test kernel failed to compile or run "
            f"({type(e).__name__}: {' '.join(str(e).split())}); numba-cuda needs the CUDA compiler "
            "libraries (NVVM, NVRTC) as well: pip install 'numba-cuda[cu12]' (or '[cu13]', matching the driver)"
        ) from e


class DeviceLinear(Linear):
    """y = linear(x) for a device x (T, K) f32 -> a new device (T, N) f32; nothing leaves the GPU."""

    def empty(self, shape):
        return cuda.device_array(shape, np.float32)

    def add_bias(self, out):
        activations.add_bias_(out, self.bias)


class CudaAwqLinear(DeviceLinear, AwqLinear):
    """AwqLinear on the GPU: its fields hold device arrays, its kernels are the CUDA twins."""

    def gemv(self, x, out):
        awq.awq_gemv(x, self.qweight, self.scales, self.zeros, out)

    def gemm(self, x, out):
        awq.awq_gemm(x, self.qweight, self.scales, self.zeros, out)


class CudaDenseLinear(DeviceLinear, DenseLinear):
    """DenseLinear on the GPU."""

    def gemv(self, x, out):
        dense.dense_gemv(x, self.weight, out)

    def gemm(self, x, out):
        dense.dense_gemm(x, self.weight, out)


class CudaInt8Linear(DeviceLinear, Int8Linear):
    """Int8Linear on the GPU."""

    def gemv(self, x, out):
        int8.int8_gemv(x, self.qweight, self.scales, out)

    def gemm(self, x, out):
        int8.int8_gemm(x, self.qweight, self.scales, out)


# host class -> (device class, its array fields besides bias)
TWINS = {
    AwqLinear: (CudaAwqLinear, ("qweight", "scales", "zeros")),
    DenseLinear: (CudaDenseLinear, ("weight",)),
    Int8Linear: (CudaInt8Linear, ("qweight", "scales")),
}


def upload(weights: ModelWeights) -> ModelWeights:
    """The same ModelWeights with every Linear a device twin and every norm a device array.

    Each stacked projection goes up once as (L, ...) device arrays; the layers are views into them.
    """
    stacks = {name: upload_linear(stack) for name, stack in weights.stacks.items()}
    norms = cuda.to_device(np.ascontiguousarray(weights.norms))
    head = weights.lm_head.to_dense() if isinstance(weights.lm_head, HalfLinear) else weights.lm_head  # f32 on the GPU
    return replace(weights, layers=layers_of(stacks, norms), norm=cuda.to_device(np.ascontiguousarray(weights.norm)),
                   lm_head=upload_linear(head), stacks=stacks, norms=norms)


def upload_linear(linear: Linear) -> DeviceLinear:
    """A host Linear (one layer's, or stacked over layers) -> its device twin, each array copied once."""
    if type(linear) not in TWINS:
        raise DeviceError(f"no CUDA kernels for {type(linear).__name__} weights (supported: "
                          f"{', '.join(k.__name__ for k in TWINS)})")
    device_kind, names = TWINS[type(linear)]
    arrays = {name: cuda.to_device(np.ascontiguousarray(getattr(linear, name))) for name in names}
    bias = None if linear.bias is None else cuda.to_device(np.ascontiguousarray(linear.bias))
    return device_kind(**arrays, bias=bias)
