"""The calibrated pass over one decoder layer: record its inputs, search AWQ's scales and clipping, round.

For each decoder layer in turn (quantize.py loads them one at a time):

    1. run the layer over the calibration activations, recording the input of each
       linear group (awq_search.py's table: qkv, o_proj, gate_up, down_proj)
    2. per group, with H = X^T X of its inputs:
         scales   AWQ's per-channel scales, folded into the op before (H becomes that of X / s)
         clip     AWQ's per-group clipping ranges
         round    to nearest on the clipped grid, or GPTQ's error feedback (gptq.py) on it, in act order;
                  then each group's fp16 scale refit to the output error (gptq.refit_scales)
    3. the activations entering the next layer: this layer's output on the calibration
       inputs (``propagate``: with the float weights, as AutoAWQ; or with the rounded ones,
       as GPTQ, so the next layer also learns to undo this one's error)

A method is a choice of those steps (METHODS). Memory: the residual stream
(samples, T, H) f32 (twice with propagate='quantized': the layer runs again, once rounded, from
a copy of its inputs), the four groups' Gram matrices (H^2 | q_size^2 | H^2 | I^2), and the
layer's weights; the groups' inputs themselves are only summed, never stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..checkpoint.config import ModelConfig
from ..model.backend import CPU
from ..model.forward import LINEAR_INPUTS, decoder_layer
from ..model.rope import cos_sin
from ..model.weights import LayerWeights
from .awq_search import Group, apply_clip, fold_scales, scaling_groups, search_clip, search_scales
from .gptq import gptq_quantize, refit_scales
from .rounding import dequantize, rtn_quantize


@dataclass(frozen=True)
class Method:
    """Which steps of the pass a quantization method takes."""

    scales: bool  # AWQ's per-channel scales
    clip: bool  # AWQ's clipping search
    gptq: bool  # GPTQ's error feedback instead of rounding to nearest
    act_order: bool = False  # GPTQ rounds the largest inputs' columns first (static groups)
    refit: bool = False  # after rounding, refit each group's scale to the output error (gptq.refit_scales)
    propagate: str = "float"  # the next layer's inputs: 'float' or 'quantized' outputs of this one

    @property
    def calibrated(self) -> bool:
        return self.scales or self.clip or self.gptq


# GPTQ's methods take every step that measured better on the default model (benchmarks/RESULTS.md, the
# quantizer: whole held-out texts, x fp32 for prose/code/chat): without them 1.105/1.084/1.090, with act
# order 1.094/1.072/1.072, also calibrating on the rounded layers 1.094/1.078/1.059, also refitting the
# scales 1.088/1.062/1.053. "awq" stays AutoAWQ's method.
GPTQ_STEPS = {"act_order": True, "refit": True, "propagate": "quantized"}
METHODS = {
    "awq-gptq": Method(scales=True, clip=True, gptq=True, **GPTQ_STEPS),
    "awq": Method(scales=True, clip=True, gptq=False),
    "gptq": Method(scales=False, clip=True, gptq=True, **GPTQ_STEPS),
    "rtn": Method(scales=False, clip=False, gptq=False),
}

Quantized = tuple  # (codes (N, K) u8, zeros (N, G) u8, scales (N, G) f16) of one fused linear


class LayerQuantizer:
    """The calibration activations, and the method's steps applied to each layer in turn."""

    def __init__(self, config: ModelConfig, x: np.ndarray, group_size: int, method: Method):
        self.config, self.group_size, self.method = config, group_size, method
        self.x = x  # (samples, T, H) f32: the residual stream entering the next layer
        self.cos, self.sin = cos_sin(config.rope, config.head_dim, config.max_position_embeddings, 0, x.shape[1])

    def layer(self, layer: LayerWeights) -> dict[str, Quantized]:
        """Quantize ``layer``'s four linears (its norms and rows take the folded scales, in place).

        Returns each group's rounded fused linear by LayerWeights field; advances to the next layer's inputs.
        """
        start = self.x.copy() if self.method.propagate == "quantized" else None
        stats = self._run(layer, self.x)
        groups = scaling_groups(self.config, layer)
        grams = {group.name: self._scale(group, *stats.pop(group.name)) for group in groups}
        # every scale is folded before any rounding: o_proj's and down_proj's scales land in v's and up's rows
        out = {group.name: self._round(group, grams.pop(group.name)) for group in groups}
        if start is not None:  # the rounded layer's outputs feed the next one
            for group in groups:
                group.linear.weight[...] = dequantize(*out[group.name])
            self.x = start
            self._run(layer, self.x, record=False)
        return out

    def _scale(self, group: Group, gram: np.ndarray, x_mean: np.ndarray) -> np.ndarray:
        """Search and fold the group's AWQ scales (when the method has them); the Gram matrix of its scaled inputs.

        gram (K, K): X^T X of the group's calibration inputs; x_mean (K,): their mean |x| per channel.
        """
        if self.method.scales and group.prev:
            s = search_scales(x_mean, gram, group.linear.weight, self.group_size)
            fold_scales(group, s)
            gram /= np.outer(s, s)  # the Gram matrix of the scaled inputs x / s
        return gram

    def _round(self, group: Group, gram: np.ndarray) -> Quantized:
        """The group's linear rounded to 4 bits: clipped and rounded to nearest, or through GPTQ."""
        m, g, weight = self.method, self.group_size, group.linear.weight
        target = weight.copy() if m.refit else None
        if not m.gptq:
            if m.clip:
                rows = weight[group.clip]
                apply_clip(rows, search_clip(gram, rows, g), g)
            rounded = rtn_quantize(weight, g)
            return rounded if target is None else self._refit(target, gram, rounded)

        def clip(block: np.ndarray, part: np.ndarray) -> np.ndarray:
            bound = np.abs(part).max(axis=1, keepdims=True)
            bound[group.clip] = search_clip(block, part[group.clip], g)
            return bound

        rounded = gptq_quantize(weight, gram, g, clip if m.clip else None, m.act_order)
        return rounded if target is None else self._refit(target, gram, rounded)

    @staticmethod
    def _refit(weight: np.ndarray, gram: np.ndarray, rounded: Quantized) -> Quantized:
        codes, zeros, scales = rounded
        return codes, zeros, refit_scales(weight, gram, codes, zeros, scales)

    def _run(self, layer: LayerWeights, x: np.ndarray, record: bool = True) -> dict[str, tuple]:
        """Run the layer over every sample of ``x`` in place; each group's input statistics.

        Returns {group: (X^T X (K, K), mean |X| (K,))} over all samples' tokens, accumulated
        sample by sample, so no group's inputs (tokens x K) are ever held whole.
        """
        c = self.config
        n, t, _ = x.shape
        stats = {}

        def observe(name, value):
            if name not in LINEAR_INPUTS:  # the residual stream and rotated q/k/v: not inputs of a linear
                return
            if name not in stats:
                stats[name] = (np.zeros((value.shape[1], value.shape[1]), np.float32), np.zeros(value.shape[1]))
            gram, abs_sum = stats[name]
            gram += value.T @ value
            abs_sum += np.abs(value).sum(axis=0)

        for i in range(n):
            k_cache = np.zeros((c.num_key_value_heads, t, c.head_dim), np.float32)
            v_cache = np.zeros_like(k_cache)
            segments = [(k_cache, v_cache, 0, slice(None))]
            decoder_layer(CPU, c, layer, x[i], segments, self.cos, self.sin, observe if record else None)
        return {name: (gram, (abs_sum / (n * t)).astype(np.float32)) for name, (gram, abs_sum) in stats.items()}
