"""AWQ packing checked against AutoAWQ's layout, not against our own code.

Source of the layout: AutoAWQ, ``awq/modules/linear/gemm.py``
(``WQLinear_GEMM.from_linear``): 8 output columns per int32 word,
``order_map = [0, 2, 4, 6, 1, 3, 5, 7]``, nibble i (bits 4i..4i+3) holding
column order_map[i]; ``awq/utils/packing_utils.py`` reads it back with
``AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]``. The hand-worked vectors
below follow from those two lines; where AutoAWQ itself imports (torch on CPU),
its packer and dequantiser are compared too.
"""

import numpy as np
import pytest

from awqinfer.engine.checkpoint.awq_layout import pack_awq, unpack_awq
from awqinfer.engine.model.linear import awq_to_kernel_layout
from awqinfer.kernels.awq import awq_gemm, awq_gemv
from checkpoints import autoawq_pack, autoawq_unpack, awq_dequantize as oracle_dequantize, awq_quantize
from oracle import kernel_layout_weight


def loaded_weight(qweight, qzeros, scales, group: int) -> np.ndarray:
    """A checkpoint linear as awqinfer's loader holds it, read back as W (N, K): our unpacking end to end."""
    k, n = qweight.shape[0], qweight.shape[1] * 8
    q = np.empty((n, k // 8), np.int32)
    s = np.empty((n, k // group), np.float32)
    z = np.empty((n, k // group), np.uint8)
    awq_to_kernel_layout(qweight, qzeros, scales, q, s, z)
    return kernel_layout_weight(q, s, z)


def test_hand_worked_word():
    # Columns 0..7 hold the values 0..7. Nibble i holds column order_map[i] = 0,2,4,6,1,3,5,7,
    # so reading nibbles 7..0 gives 7,5,3,1,6,4,2,0: the word 0x75316420.
    values = np.arange(8).reshape(1, 8)
    assert pack_awq(values).view(np.uint32)[0, 0] == 0x75316420
    # Column 1 alone set to 15 lands in nibble 4 (bits 16..19).
    one = np.zeros((1, 8), int)
    one[0, 1] = 15
    assert pack_awq(one).view(np.uint32)[0, 0] == 0x000F0000
    np.testing.assert_array_equal(unpack_awq(np.array([[0x75316420]], dtype=np.uint32).view(np.int32)), values)


def test_matches_independent_packer():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 16, size=(24, 64))
    packed = pack_awq(values)
    np.testing.assert_array_equal(packed, autoawq_pack(values))
    np.testing.assert_array_equal(unpack_awq(packed), values)
    np.testing.assert_array_equal(autoawq_unpack(packed), values)


def test_checkpoint_dequantisation_matches_oracle():
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((48, 128)).astype(np.float32)  # nn.Linear [out, in]
    t = awq_quantize(weight, 32)
    ours = loaded_weight(t["qweight"], t["qzeros"], t["scales"], 32)  # [out, in]
    np.testing.assert_allclose(ours, oracle_dequantize(t["qweight"], t["qzeros"], t["scales"], 32), atol=1e-6)
    # round-to-nearest: every weight within half a step (its group's scale) of the original
    half_step = np.repeat(t["scales"].astype(np.float32).T, 32, axis=1) / 2  # [out, in]
    assert (np.abs(ours - weight) <= half_step * (1 + 1e-3)).all()


@pytest.mark.parametrize("k,n,group", [(64, 8, 8), (128, 48, 32), (256, 40, 128), (192, 16, 64)])
def test_kernel_layout_kernels_match_reference(k, n, group):
    """Repacked weights through the Numba kernels equal x @ W with the oracle's W, at every group boundary."""
    rng = np.random.default_rng(k + n)
    t = awq_quantize(rng.standard_normal((n, k)).astype(np.float32), group)
    w = oracle_dequantize(t["qweight"], t["qzeros"], t["scales"], group)  # [N, K]
    q = np.empty((n, k // 8), np.int32)
    s = np.empty((n, k // group), np.float32)
    z = np.empty((n, k // group), np.uint8)
    awq_to_kernel_layout(t["qweight"], t["qzeros"], t["scales"], q, s, z)
    np.testing.assert_allclose(kernel_layout_weight(q, s, z), w, atol=1e-5)
    x = rng.standard_normal((5, k)).astype(np.float32)
    y = np.empty((5, n), np.float32)
    awq_gemm(x, q, s, z, y)
    np.testing.assert_allclose(y, x @ w.T, rtol=1e-4, atol=1e-4)
    y1 = np.empty(n, np.float32)
    awq_gemv(x[0], q, s, z, y1)
    np.testing.assert_allclose(y1, x[0] @ w.T, rtol=1e-4, atol=1e-4)


def test_autoawq_packer_itself():
    """Where AutoAWQ imports on CPU, its own packer and dequantiser agree with ours."""
    torch = pytest.importorskip("torch")
    gemm = pytest.importorskip("awq.modules.linear.gemm")
    packing = pytest.importorskip("awq.utils.packing_utils")
    torch.manual_seed(0)
    k, n, g = 128, 64, 32  # AutoAWQ sizes qweight as N // 32 * 4 words: N must be a multiple of 32
    lin = torch.nn.Linear(k, n, bias=False)
    w = lin.weight.data.T.reshape(k // g, g, n)
    lo, hi = w.amin(1), w.amax(1)
    scales = (hi - lo).clamp(min=1e-5) / 15
    zeros = torch.round(-lo / scales).clamp(0, 15)
    m = gemm.WQLinear_GEMM.from_linear(lin, 4, g, scales=scales, zeros=zeros)
    theirs = packing.dequantize_gemm(m.qweight, m.qzeros, m.scales, 4, g).float().numpy()
    ours = loaded_weight(m.qweight.numpy(), m.qzeros.numpy(), m.scales.numpy(), g)  # [N, K]
    np.testing.assert_allclose(ours.T, theirs, atol=1e-4)  # AutoAWQ dequantises in fp16
