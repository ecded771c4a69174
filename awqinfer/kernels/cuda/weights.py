"""Device twins of the engine's weights: uploaded once at load, called like the host ones.

``upload(ModelWeights) -> ModelWeights`` copies every array the forward pass reads to
the GPU once: each projection's stack becomes one (L, ...) device array per field (each
layer's Linear holds a view into it, as on the host), and so do the norms. The token embedding
table stays on the host (the lookup of a few rows happens there; model.py then uploads
the rows). This is the one module of kernels/ that knows the engine's weight classes:
it is the device half of the Backend, and engine/backend.py imports it only on request.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from numba import cuda

from ...engine.weights import AwqLinear, DenseLinear, Int8Linear, Linear, ModelWeights, layers_of
from ...errors import DeviceError
from . import awq, dense, int8
from .activations import add_bias_


class DeviceLinear(Linear):
    """y = linear(x) for a device x (T, K) f32 -> a new device (T, N) f32; nothing leaves the GPU."""

    def __call__(self, x):
        out = cuda.device_array((x.shape[0], self.out_features), np.float32)
        if x.shape[0] == 1:
            self.gemv(x[0], out[0])
        else:
            self.gemm(x, out)
        if self.bias is not None:
            add_bias_(out, self.bias)
        return out


class CudaAwqLinear(DeviceLinear, AwqLinear):
    """AwqLinear on the GPU: its fields hold device arrays, its kernels are the CUDA twins."""

    def gemv(self, x, out):
        awq.awq_gemv(x, self.qweight, self.scales, self.szeros, out)

    def gemm(self, x, out):
        awq.awq_gemm(x, self.qweight, self.scales, self.szeros, out)


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
    AwqLinear: (CudaAwqLinear, ("qweight", "scales", "szeros")),
    DenseLinear: (CudaDenseLinear, ("weight",)),
    Int8Linear: (CudaInt8Linear, ("qweight", "scales")),
}


def upload(weights: ModelWeights) -> ModelWeights:
    """The same ModelWeights with every Linear a device twin and every norm a device array.

    Each stacked projection goes up once as (L, ...) device arrays; the layers are views into them.
    """
    stacks = {name: upload_linear(stack) for name, stack in weights.stacks.items()}
    norms = cuda.to_device(np.ascontiguousarray(weights.norms))
    return replace(weights, layers=layers_of(stacks, norms), norm=cuda.to_device(np.ascontiguousarray(weights.norm)),
                   lm_head=upload_linear(weights.lm_head), stacks=stacks, norms=norms)


def upload_linear(linear: Linear) -> DeviceLinear:
    """A host Linear (one layer's, or stacked over layers) -> its device twin, each array copied once."""
    if type(linear) not in TWINS:
        raise DeviceError(f"no CUDA kernels for {type(linear).__name__} weights (supported: "
                          f"{', '.join(k.__name__ for k in TWINS)})")
    device_kind, names = TWINS[type(linear)]
    arrays = {name: cuda.to_device(np.ascontiguousarray(getattr(linear, name))) for name in names}
    bias = None if linear.bias is None else cuda.to_device(np.ascontiguousarray(linear.bias))
    return device_kind(**arrays, bias=bias)
