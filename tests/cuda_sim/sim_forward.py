"""Whole forward steps on the (simulated) device equal the CPU forward, with nothing copied per layer.

Tiny real checkpoints (written by tests/checkpoints.py), one per weight format: AWQ
Llama with linear RoPE scaling and two layers; dense Qwen2 with q/k/v biases and tied
embeddings; the same Qwen2 loaded as int8. Each runs a prompt of 4 tokens and 2 decode
steps. Run under the simulator by tests/test_cuda.py; see simulated.py.
"""

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

import simulated
from checkpoints import make_model
from numba import cuda

import awqinfer
from awqinfer.engine.model.backend import CPU
from awqinfer.engine.model.device import get_backend
from awqinfer.engine.checkpoint.safetensors import Checkpoint
from awqinfer.engine.checkpoint.config import ModelConfig
from awqinfer.engine.model import Model
from awqinfer.engine.model.weights import load_weights
from awqinfer.engine.model.cuda import DeviceLinear

TINY = dict(hidden=32, intermediate=64, heads=2, kv_heads=1, vocab_size=64)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {
        "llama_awq": make_model(tmp_path_factory.mktemp("llama_awq"), "llama", awq_group=16, **TINY,
                                rope_scaling={"rope_type": "linear", "factor": 2.0}),
        "qwen2_tied": make_model(tmp_path_factory.mktemp("qwen2"), "qwen2", layers=1, tie=True, **TINY),
    }


CASES = {  # name: (checkpoint, load as int8)
    "llama_awq": ("llama_awq", False),
    "qwen2_dense_bias_tied": ("qwen2_tied", False),
    "qwen2_int8_bias": ("qwen2_tied", True),
}


def is_on_device(a) -> bool:
    return hasattr(a, "copy_to_host")


@pytest.fixture
def host_arrays_in_kernels(monkeypatch):
    """Under the simulator, every numpy array passed to a kernel launch (an implicit copy) is recorded."""
    seen = []
    if simulated.SIMULATED:
        from numba.cuda.simulator.kernel import FakeCUDAKernel

        launch = FakeCUDAKernel.__call__

        def checked(self, *args):
            if not self._device:
                seen.extend(f"{self.fn.__name__}: {a.shape}" for a in args if isinstance(a, np.ndarray))
            return launch(self, *args)

        monkeypatch.setattr(FakeCUDAKernel, "__call__", checked)
    return seen


@pytest.mark.parametrize("case", CASES)
def test_forward_on_device_equals_cpu(case, checkpoints, host_arrays_in_kernels):
    directory, int8 = CASES[case]
    config = ModelConfig.load(checkpoints[directory])
    copies = Counter()

    def counted(name, copy):
        def run(a):
            copies[name] += 1
            return copy(a)
        return run

    cuda_ops = get_backend("cuda")
    ops = replace(cuda_ops, to_device=counted("to_device", cuda_ops.to_device),
                  to_host=counted("to_host", cuda_ops.to_host))
    cpu = Model(config, load_weights(Checkpoint(checkpoints[directory]), config, int8=int8), CPU,
                kv_dtype="float32")  # device caches hold f32 keys and values
    gpu = Model(config, load_weights(Checkpoint(checkpoints[directory]), config, int8=int8), ops)

    w = gpu.weights
    linears = [lin for layer in w.layers for lin in (layer.qkv, layer.o_proj, layer.gate_up, layer.down_proj)]
    assert all(isinstance(lin, DeviceLinear) for lin in linears + [w.lm_head])
    assert all(is_on_device(a) for layer in w.layers for a in (layer.input_norm, layer.post_norm)) and is_on_device(w.norm)
    assert isinstance(w.stacks["qkv"], DeviceLinear) and is_on_device(w.norms)  # the stacks went up once
    field = "qweight" if hasattr(w.layers[0].qkv, "qweight") else "weight"
    assert getattr(w.layers[0].qkv, field).shape == getattr(w.stacks["qkv"], field).shape[1:]  # layers view them

    cpu_cache, gpu_cache = cpu.new_cache(8), gpu.new_cache(8)
    assert is_on_device(gpu_cache.k) and is_on_device(gpu_cache.v)
    prompt = [1, 17, 42, 5]
    want = cpu.forward(prompt, cpu_cache)
    got = gpu.forward(prompt, gpu_cache)
    assert isinstance(got, np.ndarray) and got.shape == (4, config.vocab_size)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    token = int(want[-1].argmax())
    for _ in range(2):
        before = copies.copy()
        want = cpu.forward([token], cpu_cache, last_only=True)
        got = gpu.forward([token], gpu_cache, last_only=True)
        assert got.shape == (1, config.vocab_size)  # only the logits the sampler needs come back
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        assert int(got.argmax()) == int(want.argmax())
        step = copies - before
        assert step == Counter(to_device=3, to_host=1), f"host<->device copies in one decode step: {step}"
        token = int(want.argmax())
    assert gpu_cache.pos == cpu_cache.pos == 6
    np.testing.assert_allclose(gpu_cache.k.copy_to_host()[:, :, :6], cpu_cache.k[:, :, :6], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gpu_cache.v.copy_to_host()[:, :, :6], cpu_cache.v[:, :, :6], rtol=1e-4, atol=1e-4)
    assert host_arrays_in_kernels == [], f"host arrays passed to kernels (copied per launch): {host_arrays_in_kernels}"


def test_load_with_device_cuda(checkpoints):
    llm = awqinfer.load(checkpoints["llama_awq"], device="cuda")
    assert llm.model.backend.name == "cuda"
    assert isinstance(llm.model.weights.layers[0].qkv, DeviceLinear)
    assert get_backend("cuda") is llm.model.backend  # built once per process


def test_no_gpu_is_a_clear_error(monkeypatch):
    """With the driver or GPU missing, cuda_backend() says so instead of failing inside a kernel."""
    from awqinfer.errors import DeviceError
    from awqinfer.engine.model.cuda import cuda_backend

    def no_driver():
        raise RuntimeError("CUDA driver library cannot be found")

    monkeypatch.setattr(cuda, "is_available", lambda: False)
    monkeypatch.setattr(cuda, "current_context", no_driver)
    cuda_backend.cache_clear()
    try:
        with pytest.raises(DeviceError, match="needs an NVIDIA GPU.*CUDA driver library cannot be found"):
            get_backend("cuda")
    finally:
        cuda_backend.cache_clear()


def test_weights_without_cuda_kernels_are_a_clear_error(checkpoints):
    from awqinfer.engine.model.linear import Linear
    from awqinfer.errors import DeviceError

    class Ternary(Linear):  # a format the device has no kernels for
        bias = None

    config = ModelConfig.load(checkpoints["qwen2_tied"])
    weights = load_weights(Checkpoint(checkpoints["qwen2_tied"]), config)
    weights.lm_head = Ternary()
    with pytest.raises(DeviceError, match="no CUDA kernels for Ternary weights"):
        get_backend("cuda").upload(weights)
