"""Validated model weights: the only module that knows Hugging Face tensor names.

Every tensor is checked (present, shape, dtype) before a kernel sees it, and every
tensor in the checkpoint must be used: a stray name means the checkpoint is not
what config.json claims.

Within a layer q/k/v are fused into one ``qkv`` matrix and gate/up into one
``gate_up`` (they share an input). Across layers each projection is stored
stacked, ``(n_layers, ...)``, and each layer holds views into the stack: a
compiled decode step can take all layers in one call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ...errors import CheckpointError
from ..checkpoint.config import ModelConfig
from ..checkpoint.safetensors import Checkpoint
from .linear import AwqLinear, DenseLinear, Embedding, Int8Linear, Linear, awq_to_kernel_layout, quantize_int8, \
    stored_linear
from .memory import ensure_memory

FLOAT_DTYPES = ("F32", "F16", "BF16")
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some exports carry; recomputed from config
LAYER_NORMS = ("input_layernorm", "post_attention_layernorm")  # LayerWeights.input_norm, .post_norm


@dataclass
class LayerWeights:
    """One decoder layer; every array is a view into the per-projection stacks."""

    input_norm: np.ndarray  # (H,) f32
    qkv: Linear  # H -> (n_heads + 2 kv_heads) * head_dim
    o_proj: Linear  # n_heads * head_dim -> H
    post_norm: np.ndarray  # (H,) f32
    gate_up: Linear  # H -> 2 * I
    down_proj: Linear  # I -> H


@dataclass
class ModelWeights:
    """Everything the forward pass reads.

    ``layers`` is what the readable forward walks; ``stacks`` and ``norms`` hold the same
    arrays stacked over layers, what a compiled decode step takes in one call.
    """

    embed: Embedding
    layers: list[LayerWeights]
    norm: np.ndarray  # (H,) f32
    lm_head: Linear  # H -> V
    stacks: dict[str, Linear]  # 'qkv', 'o_proj', 'gate_up', 'down_proj' -> Linear over (L, ...) arrays
    norms: np.ndarray  # (L, 2, H) f32: input and post-attention RMSNorm weights


def layers_of(stacks: dict[str, Linear], norms) -> list[LayerWeights]:
    """Per-layer views of stacked projections and norms (host or device arrays alike)."""
    return [LayerWeights(norms[l, 0], stacks["qkv"].layer(l), stacks["o_proj"].layer(l), norms[l, 1],
                         stacks["gate_up"].layer(l), stacks["down_proj"].layer(l))
            for l in range(norms.shape[0])]


@dataclass(frozen=True)
class Projection:
    """One fused matrix of a decoder layer: its HF parts stacked along N, in this order."""

    parts: tuple[tuple[str, int], ...]  # (HF module suffix, out_features)
    in_features: int
    bias: bool

    @property
    def out_features(self) -> int:
        return sum(n for _, n in self.parts)

    def modules(self, l: int) -> Iterator[tuple[str, int, slice]]:
        """Layer ``l``'s parts: (HF module name, out_features, its rows of the fused matrix)."""
        lo = 0
        for suffix, n in self.parts:
            yield f"model.layers.{l}.{suffix}", n, slice(lo, lo + n)
            lo += n


def projections(config: ModelConfig) -> dict[str, Projection]:
    """The four fused projections of a decoder layer, keyed by their LayerWeights field."""
    c = config
    H, I = c.hidden_size, c.intermediate_size
    return {
        "qkv": Projection((("self_attn.q_proj", c.q_size), ("self_attn.k_proj", c.kv_size),
                           ("self_attn.v_proj", c.kv_size)), H, c.attention_bias),
        "o_proj": Projection((("self_attn.o_proj", H),), c.q_size, c.o_bias),
        "gate_up": Projection((("mlp.gate_proj", I), ("mlp.up_proj", I)), H, c.mlp_bias),
        "down_proj": Projection((("mlp.down_proj", H),), I, c.mlp_bias),
    }


class _Loader:
    """Reads tensors by HF name, checking each against the shape the config implies."""

    def __init__(self, ckpt: Checkpoint, config: ModelConfig, int8: bool = False):
        self.ckpt, self.config, self.used = ckpt, config, set()
        self.int8 = int8  # float projections become Int8Linear, each tensor converted as it is read

    def check(self, name: str, shape: tuple, dtypes: tuple) -> None:
        """Refuse a tensor that is missing or not of ``shape`` and one of ``dtypes``, without reading it."""
        info = self.ckpt.info(name)
        if info.dtype not in dtypes:
            raise CheckpointError(f"{info.path}: tensor {name!r} has dtype {info.dtype}, expected {' or '.join(dtypes)}")
        if tuple(info.shape) != tuple(shape):
            raise CheckpointError(f"{info.path}: tensor {name!r} has shape {tuple(info.shape)}, expected {tuple(shape)}")

    def read(self, name: str) -> np.ndarray:
        """A tensor already checked, as stored (memory-mapped)."""
        self.used.add(name)
        return self.ckpt.get(name)

    def tensor(self, name: str, shape: tuple, dtypes: tuple) -> np.ndarray:
        self.check(name, shape, dtypes)
        return self.read(name)

    def float32(self, name: str, shape: tuple | None = None) -> np.ndarray:
        """A float tensor widened to f32, checked against ``shape`` unless it already was (shape None)."""
        if shape is not None:
            self.check(name, shape, FLOAT_DTYPES)
        self.used.add(name)
        out = self.ckpt.to_float32(name)
        self.ckpt.release(name)
        return out

    def plan(self, projection: Projection, layers: range) -> tuple[int | None, int]:
        """Check every tensor of one projection of ``layers`` without reading it.

        Returns its AWQ group size (None: stored as floats) and the bytes its stack will take.
        """
        K, N, L = projection.in_features, projection.out_features, len(layers)
        parts = [part for l in layers for part in projection.modules(l)]  # (module, n, rows)
        quant = self.config.quant
        quantized = {quant is not None and quant.quantizes(m) for m, _, _ in parts}
        if len(quantized) > 1:
            raise CheckpointError(
                f"{self.ckpt.directory}: modules_to_not_convert leaves only some of "
                f"{', '.join(s for s, _ in projection.parts)} quantized; awqinfer needs one format per projection "
                "across layers")
        g = quant.group_size if quantized.pop() else None
        if g is not None and K % g:
            raise CheckpointError(f"{self.ckpt.directory}: AWQ group_size {g} does not divide in_features {K} "
                                  f"of {parts[0][0]}")
        for m, n, _ in parts:
            if g is not None and n % 8:
                raise CheckpointError(f"{m}: AWQ needs out_features divisible by 8, got {n}")
            for name, shape, dtypes in _part_tensors(m, n, K, g, projection.bias):
                self.check(name, shape, dtypes)
        per_row = K // 2 + 5 * (K // g) if g is not None else K + 4 if self.int8 else 4 * K  # bytes per output row
        return g, L * N * (per_row + 4 * projection.bias)

    def projection(self, projection: Projection, layers: range) -> Linear:
        """Load one projection of ``layers``, fusing its parts along N: one Linear over (len(layers), ...) arrays.

        Every part's tensors are checked first (``plan``), so that the stacks, sized from
        config.json, are only allocated once the checkpoint's own tensors agree with it.
        """
        K, N, L = projection.in_features, projection.out_features, len(layers)
        g, _ = self.plan(projection, layers)
        parts = [(i, *part) for i, l in enumerate(layers) for part in projection.modules(l)]  # (i, module, n, rows)
        if g is not None:
            stack = AwqLinear(np.empty((L, N, K // 8), np.int32), np.empty((L, N, K // g), np.float32),
                              np.empty((L, N, K // g), np.uint8))
            for i, m, n, rows in parts:
                awq_to_kernel_layout(self.read(f"{m}.qweight"), self.read(f"{m}.qzeros"), self.read(f"{m}.scales"),
                                     stack.qweight[i, rows], stack.scales[i, rows], stack.zeros[i, rows])
                for suffix in ("qweight", "qzeros", "scales"):
                    self.ckpt.release(f"{m}.{suffix}")
        elif self.int8:
            stack = Int8Linear(np.empty((L, N, K), np.int8), np.empty((L, N), np.float32))
            for i, m, n, rows in parts:
                stack.qweight[i, rows], stack.scales[i, rows] = quantize_int8(self.float32(f"{m}.weight"))
        else:
            stack = DenseLinear(np.empty((L, N, K), np.float32))
            for i, m, n, rows in parts:
                stack.weight[i, rows] = self.float32(f"{m}.weight")
        if projection.bias:
            stack.bias = np.empty((L, N), np.float32)
            for i, m, n, rows in parts:
                stack.bias[i, rows] = self.float32(f"{m}.bias")
        return stack

    def norms(self, l: int) -> tuple[np.ndarray, np.ndarray]:
        """Layer ``l``'s input and post-attention RMSNorm weights, (H,) f32 each."""
        H = self.config.hidden_size
        return tuple(self.float32(f"model.layers.{l}.{name}.weight", (H,)) for name in LAYER_NORMS)


def _part_tensors(module: str, n: int, K: int, group: int | None, bias: bool) -> list[tuple[str, tuple, tuple]]:
    """(name, shape, dtypes) of the tensors of one HF module with ``n`` outputs: AWQ's three when
    ``group`` is its group size, else a float weight; and its bias."""
    if group is not None:
        found = [(f"{module}.qweight", (K, n // 8), ("I32",)), (f"{module}.qzeros", (K // group, n // 8), ("I32",)),
                 (f"{module}.scales", (K // group, n), FLOAT_DTYPES)]
    else:
        found = [(f"{module}.weight", (n, K), FLOAT_DTYPES)]
    return found + ([(f"{module}.bias", (n,), FLOAT_DTYPES)] if bias else [])


def load_weights(ckpt: Checkpoint, config: ModelConfig, int8: bool = False) -> ModelWeights:
    """Read, check and lay out every weight of a Llama/Qwen2 checkpoint.

    ``int8``: float decoder projections are quantized to int8 weight-only (per output
    channel, symmetric) one tensor at a time as they are read; embeddings, norms and
    lm_head stay float, as AWQ leaves them.
    """
    c = config
    ld = _Loader(ckpt, c, int8)
    H, V, L = c.hidden_size, c.vocab_size, c.num_hidden_layers

    embed_raw = ld.tensor("model.embed_tokens.weight", (V, H), FLOAT_DTYPES)
    embed = Embedding(embed_raw, bf16=ckpt.info("model.embed_tokens.weight").dtype == "BF16")
    # every decoder tensor checked before anything sized from config.json is allocated, then the memory
    need = sum(ld.plan(p, range(L))[1] for p in projections(c).values()) + 4 * (V * H + (2 * L + 1) * H)
    ensure_memory(need, f"{ckpt.directory}: its weights")

    stacks = {name: ld.projection(p, range(L)) for name, p in projections(c).items()}
    norms = np.stack([ld.norms(l) for l in range(L)])  # (L, 2, H)
    norm = ld.float32("model.norm.weight", (H,))

    if c.tie_word_embeddings:
        lm_head = embed.as_linear()
        if "lm_head.weight" in ckpt:  # some exports store the tied copy too
            ld.tensor("lm_head.weight", (V, H), FLOAT_DTYPES)
    else:  # AutoAWQ quantizes decoder layers only: lm_head stays a float weight, 16-bit ones as stored
        raw = ld.tensor("lm_head.weight", (V, H), FLOAT_DTYPES)
        lm_head = stored_linear(raw, bf16=ckpt.info("lm_head.weight").dtype == "BF16")

    unknown = sorted(n for n in ckpt.tensors if n not in ld.used and not n.endswith(IGNORED_SUFFIXES))
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise CheckpointError(
            f"{ckpt.info(unknown[0]).path}: unknown tensor(s) {', '.join(map(repr, unknown[:5]))}{more} "
            f"for {c.architecture} as configured"
        )
    return ModelWeights(embed, layers_of(stacks, norms), norm, lm_head, stacks, norms)


def load_layer(ckpt: Checkpoint, config: ModelConfig, l: int) -> LayerWeights:
    """Decoder layer ``l`` alone, checked like ``load_weights``: the quantizer holds one layer at a time."""
    ld = _Loader(ckpt, config)
    linear = {name: ld.projection(p, range(l, l + 1)).layer(0) for name, p in projections(config).items()}
    input_norm, post_norm = ld.norms(l)
    return LayerWeights(input_norm, linear["qkv"], linear["o_proj"], post_norm, linear["gate_up"], linear["down_proj"])
