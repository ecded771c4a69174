"""Device twins of the engine's weights: uploaded once at load, called like the host ones.

``upload(ModelWeights) -> ModelWeights`` copies every array the forward pass reads to
the GPU once: each projection's per-layer stack becomes one device array (each layer's
Linear holds a view into it, as on the host), norms go one by one. The token embedding
table stays on the host (the lookup of a few rows happens there; model.py then uploads
the rows). This is the one module of kernels/ that knows the engine's weight classes:
it is the device half of the Backend, and engine/backend.py imports it only on request.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
from numba import cuda

from ...engine.weights import AwqLinear, DenseLinear, Int8Linear, Linear, ModelWeights
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


@dataclass
class CudaAwqLinear(DeviceLinear):
    """AwqLinear on the GPU: the same kernel layout, device arrays."""

    qweight: object  # (N, K/8) int32, device
    scales: object  # (N, G) f32, device
    szeros: object  # (N, G) f32, device
    bias: object = None  # (N,) f32, device

    out_features = property(lambda self: self.qweight.shape[0])
    in_features = property(lambda self: self.qweight.shape[1] * 8)

    @property
    def group_size(self) -> int:
        return self.in_features // self.scales.shape[1]

    def gemv(self, x, out):
        awq.awq_gemv(x, self.qweight, self.scales, self.szeros, out)

    def gemm(self, x, out):
        awq.awq_gemm(x, self.qweight, self.scales, self.szeros, out)


@dataclass
class CudaDenseLinear(DeviceLinear):
    """DenseLinear on the GPU."""

    weight: object  # (N, K) f32, device
    bias: object = None  # (N,) f32, device

    out_features = property(lambda self: self.weight.shape[0])
    in_features = property(lambda self: self.weight.shape[1])

    def gemv(self, x, out):
        dense.dense_gemv(x, self.weight, out)

    def gemm(self, x, out):
        dense.dense_gemm(x, self.weight, out)


@dataclass
class CudaInt8Linear(DeviceLinear):
    """Int8Linear on the GPU."""

    qweight: object  # (N, K) int8, device
    scales: object  # (N,) f32, device
    bias: object = None  # (N,) f32, device

    out_features = property(lambda self: self.qweight.shape[0])
    in_features = property(lambda self: self.qweight.shape[1])

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
    """The same ModelWeights with every Linear a device twin and every norm a device array."""
    twins = {}  # id(host Linear) -> device twin
    stacks = {}
    for name, linears in weights.stacks.items():
        stacks[name] = upload_stack(linears)
        twins.update(zip(map(id, linears), stacks[name]))

    def twin(value):
        if isinstance(value, Linear):
            return twins[id(value)] if id(value) in twins else upload_stack([value])[0]
        if isinstance(value, np.ndarray):
            return cuda.to_device(np.ascontiguousarray(value))
        return value

    layers = [replace(layer, **{f.name: twin(getattr(layer, f.name)) for f in fields(layer)})
              for layer in weights.layers]
    return replace(weights, layers=layers, norm=twin(weights.norm), lm_head=twin(weights.lm_head), stacks=stacks)


def upload_stack(linears: list) -> list:
    """Per-layer host Linears of one format -> per-layer device twins viewing one (L, ...) array per field."""
    kind = type(linears[0])
    if kind not in TWINS:
        raise DeviceError(f"no CUDA kernels for {kind.__name__} weights (supported: "
                          f"{', '.join(k.__name__ for k in TWINS)})")
    if any(type(lin) is not kind for lin in linears) or len({lin.bias is None for lin in linears}) > 1:
        return [upload_stack([lin])[0] for lin in linears]
    device_kind, names = TWINS[kind]
    names = names + (("bias",) if linears[0].bias is not None else ())
    columns = {}
    for name in names:
        arrays = [getattr(lin, name) for lin in linears]
        if len({(a.shape, a.dtype) for a in arrays}) > 1:
            return [upload_stack([lin])[0] for lin in linears]
        columns[name] = cuda.to_device(np.stack(arrays))  # (L, ...) on the device, one copy
    return [device_kind(**{name: columns[name][l] for name in names}) for l in range(len(linears))]
