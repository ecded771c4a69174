"""The AWQ search (Lin et al., 2023, "AWQ: Activation-aware Weight Quantization"), one decoder layer at a time.

A few input channels of each linear carry much larger activations than the rest;
their weights matter most. AWQ multiplies those weight columns by s > 1 before
rounding (so they round more finely) and divides the layer's input by s, which
costs nothing at inference: the division is folded into the op that produces
the input (an RMSNorm weight, or the rows of the previous linear).

Per layer, for each group of linears sharing one input (AutoAWQ's
``get_layers_for_scaling`` in ``awq/models/llama.py``):

    group      input              scales fold into               clipped rows
    qkv        RMSNorm(x)         input_layernorm                v only (not q, k)
    o_proj     attention output   v_proj's rows (no GQA only)    all
    gate_up    RMSNorm(x)         post_attention_layernorm       all
    down_proj  silu(gate) * up    up_proj's rows                 all

1. scales: s = mean|x|^alpha / mean|w'|^(1-alpha) per input channel (w' = w over its
   group's max |w|: AutoAWQ's default "duo scaling"; the paper's s = mean|x|^alpha
   measured worse on SmolLM2), normalised by sqrt(max s * min s), alpha on AutoAWQ's
   grid 0, 0.05, .., 0.95; keep the s whose quantised weights give the smallest output
   error ||X W^T - (X/s) Q(W s)^T||^2 over the calibration tokens. s = 1 (plain
   round-to-nearest) is a candidate too, so the search never does worse than RTN on it.
2. clipping: per output row and group, shrink the weight range to max|w| * (1 - i/20),
   i = 0..9, keeping the one with the smallest error of that group's partial output
   (AutoAWQ's ``auto_clip``).

Differences from AutoAWQ, each a choice: the error is measured at the linears'
outputs (the paper's objective) rather than after the whole attention or MLP
block, and it is computed exactly from the Gram matrix X^T X, so the cost of the
grid does not grow with the number of calibration tokens (and clipping sees all
tokens, not 512). o_proj is scaled whenever each of its input channels comes from
exactly one v channel (kv heads == heads); AutoAWQ's test, equal v and o shapes,
also asks hidden == heads * head_dim. Layer l+1 is calibrated on the float outputs
of layer l, as in AutoAWQ (the scaled float layer computes the same function).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..checkpoint.config import ModelConfig
from ..model.backend import CPU
from ..model.forward import decoder_layer
from ..model.linear import DenseLinear
from ..model.rope import cos_sin
from ..model.weights import LayerWeights
from .rounding import fake_quantize

N_GRID = 20  # scale exponents alpha = i / N_GRID, and clipping steps of 1 / N_GRID
MAX_SHRINK = 0.5  # clipping tries ranges down to half the largest weight of a group


@dataclass
class Group:
    """Linears that share one input, and what their input scales fold into."""

    name: str  # the observe() name of the shared input
    linear: DenseLinear  # the fused linear (N, K) reading it
    prev: list[np.ndarray]  # views whose first axis makes the K input channels; [] when none can absorb s
    clip: slice  # rows of linear.weight whose range is searched (AutoAWQ skips q and k)


def scaling_groups(config: ModelConfig, layer: LayerWeights) -> list[Group]:
    """The four linear groups of a decoder layer, each with the op its scales fold into."""
    c = config
    v = slice(c.q_size + c.kv_size, c.q_size + 2 * c.kv_size)
    up = slice(c.intermediate_size, 2 * c.intermediate_size)

    def rows(linear: DenseLinear, part: slice) -> list[np.ndarray]:
        return [linear.weight[part]] + ([linear.bias[part]] if linear.bias is not None else [])

    return [
        Group("qkv", layer.qkv, [layer.input_norm], v),
        Group("o_proj", layer.o_proj, rows(layer.qkv, v) if c.kv_size == c.q_size else [], slice(None)),
        Group("gate_up", layer.gate_up, [layer.post_norm], slice(None)),
        Group("down_proj", layer.down_proj, rows(layer.gate_up, up), slice(None)),
    ]


def fold_scales(group: Group, s: np.ndarray) -> None:
    """Scale the group's input channels by 1/s (in the producing op) and its weight columns by s.

    In exact arithmetic the layer computes the same function afterwards.
    """
    for a in group.prev:
        a /= s.reshape((-1,) + (1,) * (a.ndim - 1))
    group.linear.weight *= s


def search_scales(x_mean: np.ndarray, gram: np.ndarray, weight: np.ndarray, group_size: int) -> np.ndarray:
    """The per-input-channel scales (K,) minimising the quantised output error (see the module doc).

    x_mean (K,): mean |x| per channel; gram (K, K): X^T X; weight (N, K).
    """
    n, k = weight.shape
    w = np.abs(weight).reshape(n, k // group_size, group_size)
    w_mean = (w / (w.max(axis=2, keepdims=True) + 1e-6)).reshape(n, k).mean(axis=0)  # |w| relative to its group
    candidates = [np.ones_like(x_mean)]  # s = 1: plain rounding
    for i in range(N_GRID):
        alpha = i / N_GRID
        s = np.maximum(x_mean ** alpha / (w_mean ** (1 - alpha) + 1e-4), 1e-4)
        candidates.append(s / np.sqrt(s.max() * s.min()))
    best, best_loss = None, np.inf
    for s in candidates:
        dw = fake_quantize(weight * s, group_size) / s - weight
        loss = float(np.sum((dw @ gram) * dw))  # = ||X dw^T||^2
        if loss < best_loss:
            best, best_loss = s, loss
    return best


def search_clip(gram: np.ndarray, weight: np.ndarray, group_size: int) -> np.ndarray:
    """The clipping bound (N, K/g) of each row and group minimising that group's output error.

    gram (K, K): X^T X of the (already scaled) inputs; weight (N, K).
    """
    n, k = weight.shape
    groups = k // group_size
    blocks = np.stack([gram[i * group_size:(i + 1) * group_size, i * group_size:(i + 1) * group_size]
                       for i in range(groups)])  # (G, g, g): each group's own inputs
    w = weight.reshape(n, groups, group_size)
    full = np.abs(w).max(axis=2)  # (N, G)
    best, best_err = full.copy(), np.full(full.shape, np.inf)
    for step in range(int(MAX_SHRINK * N_GRID)):
        bound = full * (1 - step / N_GRID)
        clipped = np.clip(w, -bound[..., None], bound[..., None]).reshape(n, k)
        dw = (fake_quantize(clipped, group_size) - weight).reshape(n, groups, group_size)
        # ||X_g dw_g^T||^2 for each row and group (N, G); einsum's own loop, not many small BLAS calls
        err = np.sum(np.einsum("ngi,gij->ngj", dw, blocks) * dw, axis=2)
        better = err < best_err
        best_err[better], best[better] = err[better], bound[better]
    return best


def apply_clip(weight: np.ndarray, bound: np.ndarray, group_size: int) -> None:
    """Clip ``weight`` (N, K) in place to [-bound, bound] per row and group."""
    n, k = weight.shape
    w = weight.reshape(n, k // group_size, group_size)  # a view: weight is contiguous per row
    np.clip(w, -bound[..., None], bound[..., None], out=w)


class AwqCalibration:
    """The calibration activations entering the next layer, and the AWQ step applied to each layer in turn.

    Memory: the residual stream (samples, T, H) plus one layer's four group inputs
    (samples * T, H | q_size | H | I) and its weights, all f32; about 10 GB for a 7B model
    at 128 x 512 tokens. Time: the grid costs about 20 * N * K^2 flops per group
    (dw @ X^T X), whatever the number of tokens.
    """

    def __init__(self, config: ModelConfig, x: np.ndarray, group_size: int):
        self.config, self.group_size = config, group_size
        self.x = x  # (samples, T, H) f32: the residual stream entering the next layer
        self.cos, self.sin = cos_sin(config.rope, config.head_dim, config.max_position_embeddings, 0, x.shape[1])

    def layer(self, layer: LayerWeights) -> None:
        """Search and fold the scales and clipping of ``layer`` (in place); advance to the next layer's inputs."""
        inputs = self._run(layer)
        for group in scaling_groups(self.config, layer):
            x = inputs.pop(group.name)
            gram = x.T @ x  # (K, K)
            if group.prev:
                s = search_scales(np.abs(x).mean(axis=0), gram, group.linear.weight, self.group_size)
                fold_scales(group, s)
                gram /= np.outer(s, s)  # the Gram matrix of the scaled inputs x / s
            rows = group.linear.weight[group.clip]
            apply_clip(rows, search_clip(gram, rows, self.group_size), self.group_size)

    def _run(self, layer: LayerWeights) -> dict[str, np.ndarray]:
        """Run the float layer over every sample, recording each group's input (samples*T, K)."""
        c = self.config
        n, t, _ = self.x.shape
        inputs = {}

        for i in range(n):
            def observe(name, value, i=i):
                if name not in inputs:
                    inputs[name] = np.empty((n * t, value.shape[1]), np.float32)
                inputs[name][i * t:(i + 1) * t] = value

            k_cache = np.zeros((c.num_key_value_heads, t, c.head_dim), np.float32)
            v_cache = np.zeros_like(k_cache)
            decoder_layer(CPU, c, layer, self.x[i], [(k_cache, v_cache, 0, slice(None))], self.cos, self.sin, observe)
        return inputs
