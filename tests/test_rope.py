"""RoPE tables: a decode step's per-row table equals the prefill's, for every scaling rule."""

import numpy as np
import pytest

from awqinfer.engine.checkpoint.config import RopeConfig
from awqinfer.engine.model.rope import cos_sin, cos_sin_at, inv_freq

RULES = [
    RopeConfig(),
    RopeConfig(theta=500000.0, type="linear", factor=4.0),
    RopeConfig(theta=500000.0, type="llama3", factor=8.0, original_max_position_embeddings=64, low_freq_factor=1.0,
               high_freq_factor=4.0),
    RopeConfig(type="dynamic", factor=2.0, original_max_position_embeddings=64),
]


@pytest.mark.parametrize("rope", RULES, ids=lambda r: r.type)
def test_each_decode_row_is_its_position_alone(rope):
    """Rows at mixed positions (for ``dynamic``: inside and past the trained 64) match cos_sin one by one."""
    positions = [0, 5, 63, 64, 100, 7]
    cos, sin = cos_sin_at(rope, 16, 128, np.array(positions))
    assert cos.shape == sin.shape == (len(positions), 8) and cos.dtype == np.float32
    for row, p in enumerate(positions):
        want_cos, want_sin = cos_sin(rope, 16, 128, p, 1)
        np.testing.assert_array_equal(cos[row], want_cos[0])
        np.testing.assert_array_equal(sin[row], want_sin[0])


def test_dynamic_frequencies_follow_the_length_and_the_kept_ones_cannot_be_changed():
    rope = RULES[-1]
    inside, past = inv_freq(rope, 16, 128, 64), inv_freq(rope, 16, 128, 100)
    assert inside is inv_freq(rope, 16, 128, 10)  # one array per base, computed once
    assert past[-1] < inside[-1]  # past the trained length the base grows: slower rotations
    with pytest.raises(ValueError, match="read-only"):
        inside[0] = 1.0
