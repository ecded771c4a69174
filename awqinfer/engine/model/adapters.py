"""The LoRA adapters a model has loaded, by name, and how each row of a forward pass gets its own.

``Adapters`` keeps the adapters lora.py has read and, for each fused projection, all of
them stacked into one kernels/lora.py ``LoraStack`` (scale folded into B, padded to the
largest rank). Both forward paths read the same stacks: the readable one through
``add_lora`` (numpy, per group of rows), the compiled decode step through the kernel's
``lora_add``. Row b of a step carries an adapter index (``rows``), -1 for none: a row
without one computes exactly what the base model computes.

Adapters are only ever added: an index, once given, always means the same adapter, and a
new set of stacks replaces the old one whole, so a step in flight keeps the stacks it took.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ...errors import InputError
from ...kernels.lora import LoraLayers, LoraStack
from ..checkpoint.config import ModelConfig
from .lora import Adapter, read_adapter
from .weights import projections


class Adapters:
    """A model's LoRA adapters by name, and their weights stacked for the forward passes (``stacks``)."""

    def __init__(self, config: ModelConfig):
        self.config = config
        self._adapters: dict[str, Adapter] = {}  # in the order added: the stacks' adapter axis
        self._lock = threading.Lock()
        self.stacks = self._stack([])

    @property
    def names(self) -> list[str]:
        """The loaded adapters' names, in the order they were added."""
        return list(self._adapters)

    def add(self, named: dict[str, str | Path]) -> None:
        """Read the adapters ``{name: directory}`` and add them all, or none if any fails (CheckpointError, InputError)."""
        for name in named:
            if not isinstance(name, str) or not name.strip():
                raise InputError(f"adapter name: got {name!r}; allowed: a non-empty string")
            if name in self._adapters:
                raise InputError(f"adapter name {name!r} is already loaded (from {self._adapters[name].path})")
        read = {name: read_adapter(path, self.config) for name, path in named.items()}
        with self._lock:
            if any(name in self._adapters for name in read):  # another thread added one meanwhile
                raise InputError(f"adapter name {next(n for n in read if n in self._adapters)!r} is already loaded")
            adapters = {**self._adapters, **read}
            self.stacks = self._stack(list(adapters.values()))
            self._adapters = adapters

    def index(self, name: str | None) -> int:
        """The stacks' index of adapter ``name`` (-1 for None); an unknown name is an InputError listing the loaded."""
        if name is None:
            return -1
        if name not in self._adapters:
            loaded = f"loaded: {', '.join(self._adapters)}" if self._adapters else "this model has no adapters loaded"
            raise InputError(f"lora: no adapter named {name!r}; {loaded}")
        return list(self._adapters).index(name)

    def rows(self, names, n_rows: int) -> np.ndarray:
        """Each row's adapter index (n_rows,) int64 for a list of names or None (no row has one)."""
        if names is None:
            return np.full(n_rows, -1, np.int64)
        if not isinstance(names, (list, tuple)) or len(names) != n_rows:
            raise InputError(f"adapters must be a list of {n_rows} names (or None), one per row")
        return np.array([self.index(name) for name in names], np.int64)

    def _stack(self, adapters: list[Adapter]) -> LoraLayers:
        """Every adapter's fused A and B, per projection, into LoraStacks (see kernels/lora.py)."""
        c = self.config
        stacks = {}
        for name, proj in projections(c).items():
            parts, K, N = len(proj.parts), proj.in_features, proj.out_features
            ranks = np.array([ad.rank if name in ad.weights else 0 for ad in adapters], np.int64)
            R = int(ranks.max(initial=0))
            a = np.zeros((len(adapters), c.num_hidden_layers, parts * R, K), np.float32)
            b = np.zeros((len(adapters), c.num_hidden_layers, R, N), np.float32)  # B transposed
            for i, ad in enumerate(adapters):
                if name not in ad.weights:
                    continue
                ad_a, ad_b = ad.weights[name]
                r = ad.rank
                for p in range(parts):
                    a[i, :, p * R:p * R + r] = ad_a[:, p * r:(p + 1) * r]
                b[i, :, :r] = ad_b.transpose(0, 2, 1)
            ends = np.cumsum([n for _, n in proj.parts])
            columns = np.stack([ends - [n for _, n in proj.parts], ends], axis=1).astype(np.int64)  # (P, 2)
            stacks[name] = LoraStack(a, b, columns, ranks, np.zeros(parts * R, np.float32))
        return LoraLayers(**stacks)


def row_groups(rows: np.ndarray, segments: list) -> list[tuple[int, slice]]:
    """(adapter index, rows of x) for each segment (cache, start, rows) whose row carries an adapter.

    ``rows`` holds one index per segment: a prompt is one segment, a decode batch one per sequence.
    """
    return [(int(index), seg[2]) for index, seg in zip(rows, segments) if index >= 0]


def add_lora(stack: LoraStack, layer: int, groups: list, x: np.ndarray, out: np.ndarray) -> None:
    """out[rows] += scale B (A x[rows]) with each group's adapter: the readable twin of kernels/lora.py.

    x (T, K) f32, the projection's input; out (T, N) f32, its output; groups from ``row_groups``.
    """
    R = stack.b.shape[2]
    for index, rows in groups:
        r = int(stack.rank[index])
        if r == 0:
            continue
        t = x[rows] @ stack.a[index, layer].T  # (rows, P * R): each part's A x
        for p, (lo, hi) in enumerate(stack.parts):  # each part: its block of A's rows, its output columns
            out[rows, lo:hi] += t[:, p * R:p * R + r] @ stack.b[index, layer, :r, lo:hi]
