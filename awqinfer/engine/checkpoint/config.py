"""ModelConfig, RopeConfig and QuantConfig: config.json parsed once, checked, frozen.

Field names follow Hugging Face's so that a reader can hold the two side by
side. Unknown architectures, activations and quantizations are rejected here,
before any weight is read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from ...errors import CheckpointError

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")
ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding parameters: base and the optional context-extension rule."""

    theta: float = 10000.0
    type: str = "default"  # one of ROPE_TYPES
    factor: float = 1.0
    original_max_position_embeddings: int | None = None  # llama3, dynamic
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3


@dataclass(frozen=True)
class QuantConfig:
    """AutoAWQ's ``quantization_config``: 4-bit, asymmetric, "gemm" packing."""

    group_size: int
    bits: int = 4
    zero_point: bool = True
    version: str = "gemm"
    modules_to_not_convert: tuple[str, ...] = ()

    def quantizes(self, module: str) -> bool:
        """True when ``module`` (a dotted HF name) is stored quantized (AutoAWQ matches substrings)."""
        return not any(skip in module for skip in self.modules_to_not_convert)

    def to_dict(self) -> dict:
        """The ``quantization_config`` block exactly as AutoAWQ writes it."""
        return {
            "quant_method": "awq",
            "bits": self.bits,
            "group_size": self.group_size,
            "zero_point": self.zero_point,
            "version": self.version,
            "modules_to_not_convert": list(self.modules_to_not_convert) or None,
        }


@dataclass(frozen=True)
class ModelConfig:
    """The parsed config.json of a Llama or Qwen2 causal LM."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    attention_bias: bool  # q/k/v carry a bias (always for Qwen2)
    o_bias: bool  # o_proj carries a bias (Llama's attention_bias)
    mlp_bias: bool
    rope: RopeConfig
    quant: QuantConfig | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> "ModelConfig":
        """Validate a config dict and build the config; errors name ``source`` and the key."""

        def need(key, kind=int):
            if key not in d or d[key] is None:
                raise CheckpointError(f"{source}: required key {key!r} is missing")
            value = d[key]
            if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise CheckpointError(f"{source}: {key!r} must be a positive integer, got {value!r}")
            if kind is float and (not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0):
                raise CheckpointError(f"{source}: {key!r} must be a positive number, got {value!r}")
            return value

        archs = d.get("architectures") or []
        arch = next((a for a in archs if a in ARCHITECTURES), None)
        if arch is None:
            raise CheckpointError(
                f"{source}: unsupported architecture {archs!r}; awqinfer runs {', '.join(ARCHITECTURES)}"
            )
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise CheckpointError(f"{source}: unsupported hidden_act {act!r}; only 'silu' (SwiGLU) is implemented")
        if d.get("use_sliding_window"):
            raise CheckpointError(f"{source}: use_sliding_window=true is not supported")
        if d.get("pretraining_tp", 1) not in (1, None):
            raise CheckpointError(f"{source}: pretraining_tp != 1 is not supported")

        hidden = need("hidden_size")
        heads = need("num_attention_heads")
        kv_heads = d.get("num_key_value_heads") or heads
        if heads % kv_heads:
            raise CheckpointError(
                f"{source}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}"
            )
        head_dim = d.get("head_dim") or hidden // heads
        if head_dim % 2 or (d.get("head_dim") is None and hidden % heads):
            raise CheckpointError(f"{source}: head_dim {head_dim} must be even and divide hidden_size evenly")

        is_qwen = arch == "Qwen2ForCausalLM"
        attention_bias = True if is_qwen else bool(d.get("attention_bias", False))
        eos = d.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        return cls(
            architecture=arch,
            vocab_size=need("vocab_size"),
            hidden_size=hidden,
            intermediate_size=need("intermediate_size"),
            num_hidden_layers=need("num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            max_position_embeddings=need("max_position_embeddings"),
            rms_norm_eps=float(need("rms_norm_eps", float)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=attention_bias,
            o_bias=False if is_qwen else attention_bias,
            mlp_bias=bool(d.get("mlp_bias", False)),
            rope=_rope_from_dict(d, source),
            quant=_quant_from_dict(d.get("quantization_config"), hidden, source),
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=eos_ids,
            raw=d,
        )

    @classmethod
    def load(cls, directory: str | Path) -> "ModelConfig":
        """Read ``config.json`` (and the EOS ids of ``generation_config.json``) from a checkpoint directory."""
        directory = Path(directory)
        path = directory / "config.json"
        if not path.is_file():
            raise CheckpointError(f"{directory}: no config.json; is this a Hugging Face checkpoint directory?")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise CheckpointError(f"{path}: expected a JSON object")
        config = cls.from_dict(d, str(path))
        gen_path = directory / "generation_config.json"
        if gen_path.is_file():
            try:
                gen = json.loads(gen_path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{gen_path}: not valid JSON ({e})") from None
            eos = gen.get("eos_token_id")
            extra = eos if isinstance(eos, list) else ([] if eos is None else [eos])
            ids = tuple(dict.fromkeys([*config.eos_token_ids, *extra]))
            bos = config.bos_token_id if config.bos_token_id is not None else gen.get("bos_token_id")
            config = replace(config, eos_token_ids=ids, bos_token_id=bos)
        return config


def _rope_from_dict(d: dict, source: str) -> RopeConfig:
    """Read RoPE from either form: transformers 5's ``rope_parameters`` or ``rope_theta`` + ``rope_scaling``."""
    params = dict(d.get("rope_parameters") or {})
    scaling = dict(d.get("rope_scaling") or {})
    merged = {**scaling, **params}
    theta = merged.get("rope_theta", d.get("rope_theta", 10000.0))
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise CheckpointError(f"{source}: unsupported RoPE scaling {rope_type!r}; supported: {', '.join(ROPE_TYPES)}")
    factor = float(merged.get("factor", 1.0))
    if rope_type != "default" and not factor >= 1.0:
        raise CheckpointError(f"{source}: RoPE scaling factor must be >= 1, got {factor!r}")
    orig = merged.get("original_max_position_embeddings")
    if rope_type == "dynamic" and orig is None:
        orig = d.get("max_position_embeddings")
    if rope_type == "llama3" and orig is None:
        raise CheckpointError(f"{source}: llama3 RoPE scaling needs original_max_position_embeddings")
    return RopeConfig(
        theta=float(theta),
        type=rope_type,
        factor=factor if rope_type != "default" else 1.0,
        original_max_position_embeddings=orig,
        low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
        high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
    )


def _quant_from_dict(q: dict | None, hidden: int, source: str) -> QuantConfig | None:
    """Accept AutoAWQ 4-bit gemm checkpoints; reject every other quantization by name."""
    if not q:
        return None
    method = q.get("quant_method")
    if method != "awq":
        raise CheckpointError(f"{source}: unsupported quantization {method!r}; awqinfer reads AWQ ('awq') checkpoints")
    bits = q.get("bits", q.get("w_bit"))
    if bits != 4:
        raise CheckpointError(f"{source}: AWQ bits={bits!r} is not supported; only 4-bit")
    zero_point = q.get("zero_point", True)
    if zero_point is not True:
        raise CheckpointError(f"{source}: AWQ zero_point={zero_point!r} is not supported; only true")
    version = str(q.get("version", "gemm")).lower()
    if version != "gemm":
        raise CheckpointError(f"{source}: AWQ version {version!r} is not supported; only 'gemm'")
    group = q.get("group_size", q.get("q_group_size"))
    if isinstance(group, bool) or not isinstance(group, int) or group <= 0 or group % 8:
        raise CheckpointError(f"{source}: AWQ group_size must be a positive multiple of 8, got {group!r}")
    skip = q.get("modules_to_not_convert") or ()
    return QuantConfig(group_size=group, bits=4, zero_point=True, version="gemm", modules_to_not_convert=tuple(skip))
