"""AutoAWQ's 4-bit "gemm" packing, as stored in a checkpoint: the one place its nibble order lives.

Written by AutoAWQ's ``awq/modules/linear/gemm.py`` (``WQLinear_GEMM.from_linear``) and read
back by ``awq/utils/packing_utils.py`` (``unpack_awq`` + ``reverse_awq_order``):

    qweight  int32 [K, N/8]   8 nibbles per word, packed along the output dim N
    qzeros   int32 [K/g, N/8] packed the same way
    scales   fp16  [K/g, N]
    W[k, n] = (q[k, n] - z[k // g, n]) * s[k // g, n],   y = x @ W

Inside a word the 8 output columns are interleaved: nibble i (bits 4i..4i+3) holds
column ``AWQ_PACK_ORDER[i]`` of its pack of 8, so column j is found in nibble
``AWQ_UNPACK_ORDER[j]``. Worked example: columns 0..7 holding the values 0..7 pack
into the word 0x75316420 (nibble 0 = column 0, nibble 1 = column 2, ...).

The loader (model/linear.py) turns this layout into the kernels' own; the quantizer
(quant/rounding.py) writes it.
"""

from __future__ import annotations

import numpy as np

AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i holds column AWQ_PACK_ORDER[i]
AWQ_UNPACK_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # column j lives in nibble AWQ_UNPACK_ORDER[j]
_SHIFTS = np.arange(0, 32, 4, dtype=np.uint32)


def unpack_awq(packed: np.ndarray) -> np.ndarray:
    """AutoAWQ-packed int32 [R, C/8] -> uint8 [R, C] of 4-bit values in column order."""
    nibbles = (packed.view(np.uint32)[..., None] >> _SHIFTS) & 15  # [R, C/8, 8], nibble order
    return nibbles[..., list(AWQ_UNPACK_ORDER)].astype(np.uint8).reshape(packed.shape[0], -1)


def pack_awq(values: np.ndarray) -> np.ndarray:
    """uint [R, C] of 4-bit values -> AutoAWQ-packed int32 [R, C/8] (C a multiple of 8)."""
    rows, cols = values.shape
    v = values.astype(np.uint32).reshape(rows, cols // 8, 8)[..., list(AWQ_PACK_ORDER)]
    return np.bitwise_or.reduce(v << _SHIFTS, axis=-1).view(np.int32)
