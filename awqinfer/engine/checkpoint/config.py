"""ModelConfig, RopeConfig and QuantConfig: config.json parsed once, checked, frozen.

Field names follow Hugging Face's so that a reader can hold the two side by
side. Unknown architectures, activations and quantizations are rejected here,
before any weight is read, and so is any value of the wrong type or outside
what a real checkpoint can have (MAX_SIZES): a CheckpointError naming the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from ...errors import CheckpointError

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")
ROPE_TYPES = ("default", "linear", "dynamic", "llama3")
# Sizes far past any real checkpoint (the largest today: 126 layers, hidden 16,384 to 18,432,
# intermediate 53,248, 128 heads, head_dim 256, vocab 256,000, context 10M): a config.json beyond
# them is corrupt or hostile, refused before anything is allocated or computed from it.
MAX_SIZES = {"vocab_size": 1 << 22, "hidden_size": 1 << 16, "intermediate_size": 1 << 18,
             "num_hidden_layers": 1 << 10, "num_attention_heads": 1 << 10, "num_key_value_heads": 1 << 10,
             "head_dim": 1 << 10, "max_position_embeddings": 1 << 24, "original_max_position_embeddings": 1 << 24}
MAX_ROPE_THETA = 1e15  # real bases are 1e4..1e8; a base below 1 makes frequencies overflow
MAX_ROPE_FACTOR = 1024.0  # real scaling factors are 2..64


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
        """Validate a config dict and build the config; errors name ``source`` and the key.

        Every value is checked for its type and for a range real checkpoints fit (MAX_SIZES),
        so that nothing later allocates or computes from an impossible one.
        """
        archs = d.get("architectures") or []
        if not isinstance(archs, list):
            raise CheckpointError(f"{source}: 'architectures' must be a list of names, got {archs!r}")
        arch = next((a for a in archs if isinstance(a, str) and a in ARCHITECTURES), None)
        if arch is None:
            raise CheckpointError(
                f"{source}: unsupported architecture {archs!r}; awqinfer runs {', '.join(ARCHITECTURES)}"
            )
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise CheckpointError(f"{source}: unsupported hidden_act {act!r}; only 'silu' (SwiGLU) is implemented")
        if _flag(d, "use_sliding_window", source):
            raise CheckpointError(f"{source}: use_sliding_window=true is not supported")
        if d.get("pretraining_tp", 1) not in (1, None):
            raise CheckpointError(f"{source}: pretraining_tp != 1 is not supported")

        hidden = _size(d, "hidden_size", source)
        heads = _size(d, "num_attention_heads", source)
        kv_heads = _size(d, "num_key_value_heads", source, default=heads)
        if heads % kv_heads:
            raise CheckpointError(
                f"{source}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}"
            )
        head_dim = _size(d, "head_dim", source, default=hidden // heads, low=4)
        if head_dim % 2 or (d.get("head_dim") is None and hidden % heads):
            raise CheckpointError(f"{source}: head_dim {head_dim} must be even and divide hidden_size evenly")

        is_qwen = arch == "Qwen2ForCausalLM"
        attention_bias = True if is_qwen else _flag(d, "attention_bias", source)
        return cls(
            architecture=arch,
            vocab_size=_size(d, "vocab_size", source),
            hidden_size=hidden,
            intermediate_size=_size(d, "intermediate_size", source),
            num_hidden_layers=_size(d, "num_hidden_layers", source),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            max_position_embeddings=_size(d, "max_position_embeddings", source),
            rms_norm_eps=_number(d, "rms_norm_eps", source, None, 0.0, 1.0),
            tie_word_embeddings=_flag(d, "tie_word_embeddings", source),
            attention_bias=attention_bias,
            o_bias=False if is_qwen else attention_bias,
            mlp_bias=_flag(d, "mlp_bias", source),
            rope=_rope_from_dict(d, source),
            quant=_quant_from_dict(d.get("quantization_config"), source),
            bos_token_id=_token_id(d.get("bos_token_id"), "bos_token_id", source),
            eos_token_ids=_token_ids(d.get("eos_token_id"), "eos_token_id", source),
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
            if not isinstance(gen, dict):
                raise CheckpointError(f"{gen_path}: expected a JSON object")
            extra = _token_ids(gen.get("eos_token_id"), "eos_token_id", str(gen_path))
            ids = tuple(dict.fromkeys([*config.eos_token_ids, *extra]))
            bos = config.bos_token_id if config.bos_token_id is not None else \
                _token_id(gen.get("bos_token_id"), "bos_token_id", str(gen_path))
            config = replace(config, eos_token_ids=ids, bos_token_id=bos)
        return config


def _size(d: dict, key: str, source: str, default: int | None = None, low: int = 1) -> int:
    """A size: an integer in low..MAX_SIZES[key]; ``default`` when absent (or null), required if it is None."""
    value = d.get(key)
    if value is None:
        if default is None:
            raise CheckpointError(f"{source}: required key {key!r} is missing")
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_SIZES[key]:
        raise CheckpointError(f"{source}: {key!r} must be an integer in {low}..{MAX_SIZES[key]:,} "
                              f"(no real checkpoint is larger), got {value!r}")
    return value


def _number(d: dict, key: str, source: str, default: float | None, low: float, high: float,
            name: str | None = None) -> float:
    """A finite number in (low, high]; ``default`` when absent or null, required if it is None."""
    value, label = d.get(key), name or repr(key)
    if value is None:
        if default is None:
            raise CheckpointError(f"{source}: required key {label} is missing")
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
        raise CheckpointError(f"{source}: {label} must be a number above {low:g} and at most {high:g}, got {value!r}")
    return float(value)


def _flag(d: dict, key: str, source: str) -> bool:
    """A true/false switch, false when absent or null."""
    value = d.get(key)
    if value is not None and not isinstance(value, bool):
        raise CheckpointError(f"{source}: {key!r} must be true or false, got {value!r}")
    return bool(value)


def _token_id(value, key: str, source: str) -> int | None:
    """A token id: a non-negative integer, or None."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise CheckpointError(f"{source}: {key!r} must be a token id (an integer >= 0), got {value!r}")
    return value


def _token_ids(value, key: str, source: str) -> tuple[int, ...]:
    """One token id or a list of them (EOS: models may stop on several)."""
    ids = value if isinstance(value, list) else [value]
    return tuple(i for i in (_token_id(v, key, source) for v in ids) if i is not None)


def _section(d: dict, key: str, source: str) -> dict:
    """A nested object (rope_scaling, quantization_config): a dict, {} when absent or null."""
    value = d.get(key)
    if value is not None and not isinstance(value, dict):
        raise CheckpointError(f"{source}: {key!r} must be an object, got {value!r}")
    return value or {}


def _rope_from_dict(d: dict, source: str) -> RopeConfig:
    """Read RoPE from either form: transformers 5's ``rope_parameters`` or ``rope_theta`` + ``rope_scaling``."""
    merged = {**_section(d, "rope_scaling", source), **_section(d, "rope_parameters", source)}
    theta = _number({"rope_theta": d.get("rope_theta"), **merged}, "rope_theta", source, 10000.0, 1.0, MAX_ROPE_THETA)
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if not isinstance(rope_type, str) or rope_type not in ROPE_TYPES:
        raise CheckpointError(f"{source}: unsupported RoPE scaling {rope_type!r}; supported: {', '.join(ROPE_TYPES)}")
    factor = _number(merged, "factor", source, 1.0, 0.0, MAX_ROPE_FACTOR, "RoPE scaling factor")
    if rope_type != "default" and factor < 1.0:
        raise CheckpointError(f"{source}: RoPE scaling factor must be >= 1, got {factor!r}")
    orig = merged.get("original_max_position_embeddings")
    if rope_type == "dynamic" and orig is None:
        orig = d.get("max_position_embeddings")
    if rope_type == "llama3" and orig is None:
        raise CheckpointError(f"{source}: llama3 RoPE scaling needs original_max_position_embeddings")
    if orig is not None:
        orig = _size({"original_max_position_embeddings": orig}, "original_max_position_embeddings", source)
    low = _number(merged, "low_freq_factor", source, 1.0, 0.0, MAX_ROPE_FACTOR, "RoPE low_freq_factor")
    high = _number(merged, "high_freq_factor", source, 4.0, 0.0, MAX_ROPE_FACTOR, "RoPE high_freq_factor")
    if rope_type == "llama3" and not low < high:
        raise CheckpointError(f"{source}: llama3 RoPE needs low_freq_factor < high_freq_factor, got {low} and {high}")
    extended, most = d["max_position_embeddings"] * factor, MAX_SIZES["max_position_embeddings"]
    if rope_type == "dynamic" and extended > most:
        raise CheckpointError(f"{source}: dynamic RoPE extends the context to {extended:,.0f} positions; at most {most:,}")
    return RopeConfig(
        theta=theta,
        type=rope_type,
        factor=factor if rope_type != "default" else 1.0,
        original_max_position_embeddings=orig,
        low_freq_factor=low,
        high_freq_factor=high,
    )


def _quant_from_dict(q, source: str) -> QuantConfig | None:
    """Accept AutoAWQ 4-bit gemm checkpoints; reject every other quantization by name."""
    q = _section({"quantization_config": q}, "quantization_config", source)
    if not q:
        return None
    method = q.get("quant_method")
    if method != "awq":
        raise CheckpointError(f"{source}: unsupported quantization {method!r}; awqinfer reads AWQ ('awq') checkpoints")
    bits = q.get("bits", q.get("w_bit"))
    if bits != 4 or isinstance(bits, bool):
        raise CheckpointError(f"{source}: AWQ bits={bits!r} is not supported; only 4-bit")
    zero_point = q.get("zero_point", True)
    if zero_point is not True:
        raise CheckpointError(f"{source}: AWQ zero_point={zero_point!r} is not supported; only true")
    version = q.get("version", "gemm")
    if not isinstance(version, str) or version.lower() != "gemm":
        raise CheckpointError(f"{source}: AWQ version {version!r} is not supported; only 'gemm'")
    group = q.get("group_size", q.get("q_group_size"))
    if isinstance(group, bool) or not isinstance(group, int) or group <= 0 or group % 8:
        raise CheckpointError(f"{source}: AWQ group_size must be a positive multiple of 8, got {group!r}")
    skip = q.get("modules_to_not_convert") or []
    if not isinstance(skip, list) or not all(isinstance(m, str) for m in skip):
        raise CheckpointError(f"{source}: AWQ modules_to_not_convert must be a list of module names, got {skip!r}")
    return QuantConfig(group_size=group, bits=4, zero_point=True, version="gemm", modules_to_not_convert=tuple(skip))
