"""RoPE frequencies and the cos/sin of each position, for every scaling rule we support.

The rules follow transformers' ``modeling_rope_utils``: ``linear`` divides
positions by the factor (DeepSeek-Coder, factor 4); ``dynamic`` (NTK) enlarges
the base once the sequence outgrows the trained context; ``llama3`` rescales
low frequencies and blends the middle band.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ..checkpoint.config import RopeConfig


def inv_freq(rope: RopeConfig, head_dim: int, max_position: int, seq_len: int) -> np.ndarray:
    """Inverse frequencies (D/2,) f64, read-only, for a sequence whose largest position is seq_len - 1.

    Only the ``dynamic`` rule depends on seq_len (through the base); each (rule, base) is
    computed once, as a decode step asks for them at every token.
    """
    base = rope.theta
    if rope.type == "dynamic":
        trained = rope.original_max_position_embeddings or max_position
        if seq_len > trained:
            scale = (rope.factor * seq_len / trained) - (rope.factor - 1)
            base = base * scale ** (head_dim / (head_dim - 2))
    return _frequencies(rope, head_dim, base)


@lru_cache(maxsize=256)
def _frequencies(rope: RopeConfig, head_dim: int, base: float) -> np.ndarray:
    freq = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if rope.type == "linear":
        freq = freq / rope.factor
    elif rope.type == "llama3":
        old = rope.original_max_position_embeddings
        low_wavelen = old / rope.low_freq_factor
        high_wavelen = old / rope.high_freq_factor
        wavelen = 2 * math.pi / freq
        scaled = np.where(wavelen > low_wavelen, freq / rope.factor, freq)
        smooth = (old / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
        blended = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        freq = np.where(medium, blended, scaled)
    freq.flags.writeable = False  # shared by every caller
    return freq


def cos_sin(rope: RopeConfig, head_dim: int, max_position: int, start: int, n: int):
    """cos, sin (n, D/2) f32 for positions start..start+n-1."""
    freq = inv_freq(rope, head_dim, max_position, start + n)
    angles = np.arange(start, start + n, dtype=np.float64)[:, None] * freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def cos_sin_at(rope: RopeConfig, head_dim: int, max_position: int, positions) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (B, D/2) f32, row b for position positions[b] alone: a decode step's B sequences.

    Row b equals ``cos_sin(..., positions[b], 1)``; one computation for all rows.
    """
    positions = np.asarray(positions, dtype=np.int64)
    if rope.type == "dynamic":  # each row's base follows its own length
        freq = np.stack([inv_freq(rope, head_dim, max_position, int(p) + 1) for p in positions])
    else:
        freq = inv_freq(rope, head_dim, max_position, 1)[None, :]
    angles = positions.astype(np.float64)[:, None] * freq
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
