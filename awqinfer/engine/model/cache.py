"""The KV cache of one sequence: preallocated, explicit, its fill level is the position."""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from ..checkpoint.config import ModelConfig


class KVCache:
    """Keys and values of every layer for up to ``capacity`` positions.

    k, v: (n_layers, kv_heads, capacity, head_dim) f32, on the model's device. ``pos`` is how many
    positions are filled; ``forward`` writes the new tokens at pos.. and advances it.
    """

    def __init__(self, config: ModelConfig, capacity: int, zeros=None):
        limit = max_context(config)
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or not 1 <= capacity <= limit:
            raise InputError(f"cache size must be an integer in 1..{limit} (the model's context), got {capacity!r}")
        shape = (config.num_hidden_layers, config.num_key_value_heads, int(capacity), config.head_dim)
        zeros = zeros or (lambda s: np.zeros(s, np.float32))
        self.k = zeros(shape)  # f32, on the model's device
        self.v = zeros(shape)
        self.capacity = int(capacity)
        self.pos = 0
        self.nbytes = 2 * self.k.size * self.k.dtype.itemsize  # keys and values, on the model's device

    @property
    def free(self) -> int:
        """Positions still free."""
        return self.capacity - self.pos


def max_context(config: ModelConfig) -> int:
    """The longest sequence the model supports: its trained context, extended by dynamic RoPE."""
    if config.rope.type == "dynamic":
        return int(config.max_position_embeddings * config.rope.factor)
    return config.max_position_embeddings
