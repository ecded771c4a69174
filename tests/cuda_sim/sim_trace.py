"""``awqinfer trace`` on the (simulated) device: the same record as on the CPU.

The trace observes device arrays (the residual stream, the rotated q and the device KV
cache) and copies only what it reports to the host. Run under the simulator by
tests/test_trace.py; see simulated.py.
"""

import numpy as np
import pytest

import simulated  # noqa: F401  (skips the module without a device or the simulator)
from checkpoints import make_model

import awqinfer
from awqinfer.engine.trace import trace


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("llama_awq"), "llama", awq_group=16, layers=1, hidden=32,
                      intermediate=64, heads=2, kv_heads=1)


def test_trace_on_device_equals_cpu(checkpoint):
    inputs = {"prompt": "Hello", "max_tokens": 2, "seed": 4}
    cpu = trace(awqinfer.load(checkpoint, kv_dtype="float32"), inputs)
    gpu = trace(awqinfer.load(checkpoint, device="cuda"), inputs)
    assert [s.token for s in gpu.steps] == [s.token for s in cpu.steps] and gpu.response == cpu.response
    for a, b in zip(cpu.steps, gpu.steps):
        for x, y in zip(a.layers, b.layers):
            np.testing.assert_allclose([y.norm_in, y.norm_mid, y.norm_out], [x.norm_in, x.norm_mid, x.norm_out],
                                       rtol=1e-4)
            assert y.attention.keys() == x.attention.keys()
            for h in x.attention:
                np.testing.assert_allclose([p for _, p in y.attention[h]], [p for _, p in x.attention[h]], atol=1e-4)
        assert [c.token for c in b.sampling[0].top] == [c.token for c in a.sampling[0].top]
        assert b.kv.positions == a.kv.positions
    np.testing.assert_allclose(gpu.maps, cpu.maps, atol=1e-4)
    assert [w.format for w in gpu.weights] == [w.format for w in cpu.weights]
