"""Validated model weights: the only module that knows Hugging Face tensor names.

Every tensor is checked (present, shape, dtype) before a kernel sees it, and
every tensor in the checkpoint must be used: a stray name means the checkpoint
is not what config.json claims.

Linear layers are drop-in objects with one call, ``y = linear(x)``, whatever
their format (dense fp32, AWQ 4-bit, int8), so the forward pass never branches
on format. Within a layer q/k/v are fused into one ``qkv`` matrix and
gate/up into one ``gate_up`` (they share an input). Across layers each
projection is stored stacked, ``(n_layers, ...)``, and each layer holds views
into the stack: a compiled decode step can take all layers in one call.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from ..errors import CheckpointError
from ..kernels.awq import awq_gemm, awq_gemv, to_kernel_layout
from ..kernels.dense import dense_gemm, dense_gemv
from ..kernels.int8 import int8_gemm, int8_gemv, quantize_int8
from .checkpoint import Checkpoint, widen
from .config import ModelConfig

FLOAT_DTYPES = ("F32", "F16", "BF16")
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some exports carry; recomputed from config


class Linear:
    """y = x @ W^T + b for x (T, K) f32 -> (T, N) f32; subclasses supply the two kernels."""

    bias: np.ndarray | None  # (N,) f32

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = np.empty((x.shape[0], self.out_features), np.float32)
        if x.shape[0] == 1:
            self.gemv(x[0], out[0])
        else:
            self.gemm(x, out)
        if self.bias is not None:
            out += self.bias
        return out

    def layer(self, l: int) -> "Linear":
        """Layer ``l`` of a stacked Linear (every array (n_layers, ...)): the same class over views."""
        return replace(self, **{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[l]
                                for f in fields(self)})


@dataclass
class DenseLinear(Linear):
    """Float weights, converted to f32 at load (Numba has no CPU float16)."""

    weight: np.ndarray  # (N, K) f32
    bias: np.ndarray | None = None  # (N,) f32

    out_features = property(lambda self: self.weight.shape[0])
    in_features = property(lambda self: self.weight.shape[1])

    def gemv(self, x, out):
        dense_gemv(x, self.weight, out)

    def gemm(self, x, out):
        dense_gemm(x, self.weight, out)


@dataclass
class AwqLinear(Linear):
    """AWQ 4-bit weights in the kernel layout (see kernels/awq.py)."""

    qweight: np.ndarray  # (N, K/8) int32
    scales: np.ndarray  # (N, G) f32
    szeros: np.ndarray  # (N, G) f32, scale * zero
    bias: np.ndarray | None = None  # (N,) f32

    out_features = property(lambda self: self.qweight.shape[0])
    in_features = property(lambda self: self.qweight.shape[1] * 8)

    @property
    def group_size(self) -> int:
        return self.in_features // self.scales.shape[1]

    def gemv(self, x, out):
        awq_gemv(x, self.qweight, self.scales, self.szeros, out)

    def gemm(self, x, out):
        awq_gemm(x, self.qweight, self.scales, self.szeros, out)


@dataclass
class Int8Linear(Linear):
    """Int8 weight-only, symmetric, one scale per output channel (see kernels/int8.py)."""

    qweight: np.ndarray  # (N, K) int8
    scales: np.ndarray  # (N,) f32
    bias: np.ndarray | None = None  # (N,) f32

    out_features = property(lambda self: self.qweight.shape[0])
    in_features = property(lambda self: self.qweight.shape[1])

    def gemv(self, x, out):
        int8_gemv(x, self.qweight, self.scales, out)

    def gemm(self, x, out):
        int8_gemm(x, self.qweight, self.scales, out)


@dataclass
class Embedding:
    """Token embeddings, left memory-mapped in the file's dtype; rows widened to f32 on lookup."""

    table: np.ndarray  # (V, H) f32, f16, or bf16 as uint16
    bf16: bool = False

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        return widen(self.table[ids], self.bf16)

    def to_float32(self) -> np.ndarray:
        """The whole table as f32 (V, H), for a tied lm_head."""
        return widen(self.table, self.bf16)


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

    ``layers`` is what model.py walks; ``stacks`` and ``norms`` hold the same arrays
    stacked over layers, what a compiled decode step takes in one call.
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


LAYER_NORMS = ("input_layernorm", "post_attention_layernorm")  # LayerWeights.input_norm, .post_norm


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

    def tensor(self, name: str, shape: tuple, dtypes: tuple) -> np.ndarray:
        info = self.ckpt.info(name)
        if info.dtype not in dtypes:
            raise CheckpointError(f"{info.path}: tensor {name!r} has dtype {info.dtype}, expected {' or '.join(dtypes)}")
        if tuple(info.shape) != tuple(shape):
            raise CheckpointError(f"{info.path}: tensor {name!r} has shape {tuple(info.shape)}, expected {tuple(shape)}")
        self.used.add(name)
        return self.ckpt.get(name)

    def float32(self, name: str, shape: tuple) -> np.ndarray:
        self.tensor(name, shape, FLOAT_DTYPES)
        out = self.ckpt.to_float32(name)
        self.ckpt.release(name)
        return out

    def is_quantized(self, module: str) -> bool:
        q = self.config.quant
        return q is not None and q.quantizes(module)

    def projection(self, projection: Projection, layers: range) -> Linear:
        """Load one projection of ``layers``, fusing its parts (suffix, out_features) along N.

        Returns one Linear whose arrays are stacked over the layers: (len(layers), ...).
        """
        parts, in_features, bias = projection.parts, projection.in_features, projection.bias
        L = len(layers)
        modules = [[f"model.layers.{l}.{suffix}" for suffix, _ in parts] for l in layers]
        quantized = {self.is_quantized(m) for row in modules for m in row}
        if len(quantized) > 1:
            names = ", ".join(suffix for suffix, _ in parts)
            raise CheckpointError(
                f"{self.ckpt.directory}: modules_to_not_convert leaves only some of {names} quantized; "
                "awqinfer needs one format per projection across layers"
            )
        n_total = sum(n for _, n in parts)
        offsets = np.cumsum([0] + [n for _, n in parts])
        biases = np.empty((L, n_total), np.float32) if bias else None
        if quantized.pop():
            g = self.config.quant.group_size
            if in_features % g:
                raise CheckpointError(
                    f"{self.ckpt.directory}: AWQ group_size {g} does not divide in_features {in_features} "
                    f"of {modules[0][0]}"
                )
            groups = in_features // g
            qweight = np.empty((L, n_total, in_features // 8), np.int32)
            scales = np.empty((L, n_total, groups), np.float32)
            szeros = np.empty((L, n_total, groups), np.float32)
            for l, row in enumerate(modules):
                for (lo, hi), m, (_, n) in zip(zip(offsets, offsets[1:]), row, parts):
                    if n % 8:
                        raise CheckpointError(f"{m}: AWQ needs out_features divisible by 8, got {n}")
                    to_kernel_layout(
                        self.tensor(f"{m}.qweight", (in_features, n // 8), ("I32",)),
                        self.tensor(f"{m}.qzeros", (groups, n // 8), ("I32",)),
                        self.tensor(f"{m}.scales", (groups, n), FLOAT_DTYPES),
                        qweight[l, lo:hi], scales[l, lo:hi], szeros[l, lo:hi],
                    )
                    for suffix in ("qweight", "qzeros", "scales"):
                        self.ckpt.release(f"{m}.{suffix}")
            stack = AwqLinear(qweight, scales, szeros)
        elif self.int8:
            qweight = np.empty((L, n_total, in_features), np.int8)
            scales = np.empty((L, n_total), np.float32)
            for l, row in enumerate(modules):
                for (lo, hi), m, (_, n) in zip(zip(offsets, offsets[1:]), row, parts):
                    qweight[l, lo:hi], scales[l, lo:hi] = quantize_int8(self.float32(f"{m}.weight", (n, in_features)))
            stack = Int8Linear(qweight, scales)
        else:
            weight = np.empty((L, n_total, in_features), np.float32)
            for l, row in enumerate(modules):
                for (lo, hi), m, (_, n) in zip(zip(offsets, offsets[1:]), row, parts):
                    weight[l, lo:hi] = self.float32(f"{m}.weight", (n, in_features))
            stack = DenseLinear(weight)
        if bias:
            for l, row in enumerate(modules):
                for (lo, hi), m, (_, n) in zip(zip(offsets, offsets[1:]), row, parts):
                    biases[l, lo:hi] = self.float32(f"{m}.bias", (n,))
            stack.bias = biases
        return stack


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

    stacks = {name: ld.projection(p, range(L)) for name, p in projections(c).items()}
    norms = np.empty((L, 2, H), np.float32)
    for l in range(L):
        for i, norm_name in enumerate(LAYER_NORMS):
            norms[l, i] = ld.float32(f"model.layers.{l}.{norm_name}.weight", (H,))
    norm = ld.float32("model.norm.weight", (H,))

    if c.tie_word_embeddings:
        lm_head = DenseLinear(embed.to_float32())
        if "lm_head.weight" in ckpt:  # some exports store the tied copy too
            ld.tensor("lm_head.weight", (V, H), FLOAT_DTYPES)
    else:  # AutoAWQ quantizes decoder layers only: lm_head stays a float weight
        lm_head = DenseLinear(ld.float32("lm_head.weight", (V, H)))

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
    H = config.hidden_size
    input_norm, post_norm = (ld.float32(f"model.layers.{l}.{n}.weight", (H,)) for n in LAYER_NORMS)
    return LayerWeights(input_norm, linear["qkv"], linear["o_proj"], post_norm, linear["gate_up"], linear["down_proj"])


def layer_tensors(config: ModelConfig, l: int, layer: LayerWeights) -> dict[str, np.ndarray]:
    """The HF-named f32 tensors of a dense decoder layer: the inverse of ``load_layer``.

    Fused matrices are split back into their parts: ``{module}.weight`` (N, K), ``{module}.bias`` (N,),
    and the two norms (H,).
    """
    out = {f"model.layers.{l}.{n}.weight": w for n, w in zip(LAYER_NORMS, (layer.input_norm, layer.post_norm))}
    for name, p in projections(config).items():
        linear = getattr(layer, name)
        lo = 0
        for suffix, n in p.parts:
            module = f"model.layers.{l}.{suffix}"
            out[f"{module}.weight"] = linear.weight[lo : lo + n]
            if linear.bias is not None:
                out[f"{module}.bias"] = linear.bias[lo : lo + n]
            lo += n
    return out
