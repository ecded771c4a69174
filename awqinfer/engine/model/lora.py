"""PEFT LoRA adapters, read and checked against a model before any kernel sees them.

An adapter is a directory as ``peft``'s ``save_pretrained`` writes it (and every tool
built on peft): ``adapter_config.json`` (r, lora_alpha, target_modules, ...) and
``adapter_model.safetensors``, whose tensors are named

    base_model.model.model.layers.{l}.self_attn.q_proj.lora_A.weight   (r, in_features)
    base_model.model.model.layers.{l}.self_attn.q_proj.lora_B.weight   (out_features, r)

for any of q/k/v/o_proj and gate/up/down_proj (Llama, Qwen2). A targeted module's output
becomes ``W x + scale * B (A x)``, scale = lora_alpha / r (``lora_alpha / sqrt(r)`` with
``use_rslora``). awqinfer fuses q/k/v into ``qkv`` and gate/up into ``gate_up``
(weights.py), so each adapter is fused the same way: the parts' A matrices stacked, each B
writing its own rows of the fused output.

Checked: every tensor's name (a module this model has), dtype, shape (in/out features,
rank), finiteness; the config's rank, alpha and target list. PEFT features awqinfer does
not apply are refused by name rather than ignored: DoRA, ``modules_to_save``, per-module
rank/alpha patterns, LoRA biases, embedding adapters, and the others in REFUSED.
``lora_dropout`` is a training-time setting (peft skips it in eval mode), and
``fan_in_fan_out`` only concerns GPT-2's Conv1D: on nn.Linear, peft itself turns it off.
An error names the adapter's file and tensor; nothing is kept from a failed load.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import CheckpointError
from ..checkpoint.config import ModelConfig
from ..checkpoint.safetensors import Checkpoint
from .weights import FLOAT_DTYPES, projections

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
TENSOR = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<which>[AB])\.weight")
# adapter_config.json keys whose (truthy) value asks for something this engine does not apply
REFUSED = {
    "use_dora": "DoRA (use_dora)",
    "modules_to_save": "modules_to_save (fully trained copies of base modules)",
    "rank_pattern": "per-module ranks (rank_pattern)",
    "alpha_pattern": "per-module alphas (alpha_pattern)",
    "lora_bias": "a bias on lora_B (lora_bias)",
    "layer_replication": "layer_replication",
    "target_parameters": "target_parameters (adapted parameters rather than modules)",
    "trainable_token_indices": "trainable_token_indices (trained embedding rows)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "use_qalora": "QA-LoRA (use_qalora)",
    "use_bdlora": "BD-LoRA (use_bdlora)",
    "arrow_config": "Arrow routing (arrow_config)",
    "megatron_config": "Megatron parallel layers (megatron_config)",
}
# what a tensor name gives away when it is not a lora_A/lora_B weight
FOREIGN = (("lora_magnitude_vector", "DoRA"), ("lora_embedding", "an embedding adapter"),
           ("modules_to_save", "modules_to_save"), ("lora_B.bias", "a LoRA bias"))


@dataclass(frozen=True)
class Adapter:
    """One adapter, fused to the model's projections and ready to stack (adapters.py).

    ``weights[proj] = (a, b)`` for each fused projection it touches (weights.py's names):
    a (L, P * r, K) f32, part p's A at rows p*r..; b (L, N, r) f32, B times ``scale``, zero
    for parts and layers it leaves alone.
    """

    path: Path
    rank: int
    scale: float
    targets: tuple[str, ...]  # the HF module names it adapts, e.g. ("q_proj", "v_proj")
    weights: dict[str, tuple[np.ndarray, np.ndarray]]


def read_adapter(directory: str | Path, config: ModelConfig) -> Adapter:
    """Read and check the PEFT adapter in ``directory`` against a model's ``config``; CheckpointError if unusable."""
    path = Path(directory)
    cfg_path = path / CONFIG_FILE
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such adapter directory (a PEFT LoRA adapter is a directory with "
                              f"{CONFIG_FILE} and {WEIGHTS_FILE})")
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing; a PEFT LoRA adapter directory holds {CONFIG_FILE} and "
                              f"{WEIGHTS_FILE}")
    if not (path / WEIGHTS_FILE).is_file():
        old = " (adapter_model.bin, the pickle format, is not read: re-save with safe_serialization=True)" \
            if (path / "adapter_model.bin").exists() else ""
        raise CheckpointError(f"{path / WEIGHTS_FILE}: missing{old}")
    rank, scale, targets = _settings(cfg_path, config)
    ckpt = Checkpoint(path, WEIGHTS_FILE)
    pairs = _pairs(ckpt, config)
    found = sorted({module.rsplit(".", 1)[1] for _, module in pairs})
    if isinstance(targets, list):
        for name in targets:
            if name not in found:
                raise CheckpointError(f"{cfg_path}: target_modules names {name!r} but {ckpt.directory / WEIGHTS_FILE}"
                                      f" holds no lora_A/lora_B tensors for it")
        for name in found:
            if name not in targets:
                raise CheckpointError(f"{ckpt.directory / WEIGHTS_FILE}: holds tensors for {name!r}, which "
                                      f"target_modules {targets} does not name")
    return Adapter(path, rank, scale, tuple(found), _fuse(ckpt, config, pairs, rank, scale))


def _settings(cfg_path: Path, config: ModelConfig) -> tuple[int, float, list | str]:
    """(rank, scale, target_modules) from adapter_config.json, refusing what awqinfer does not apply."""
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object, got {type(cfg).__name__}")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{cfg_path}: peft_type is {cfg.get('peft_type')!r}; only LoRA adapters (\"LORA\") "
                              "are supported")
    for key, what in REFUSED.items():
        if cfg.get(key):
            raise CheckpointError(f"{cfg_path}: uses {what}, which awqinfer does not support; allowed: plain LoRA "
                                  "on q/k/v/o/gate/up/down_proj")
    if cfg.get("bias", "none") != "none":
        raise CheckpointError(f"{cfg_path}: bias is {cfg['bias']!r} (trained base-model biases), which awqinfer "
                              "does not support; allowed: \"none\"")
    rank, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise CheckpointError(f"{cfg_path}: r is {rank!r}; allowed: an integer >= 1")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise CheckpointError(f"{cfg_path}: lora_alpha is {alpha!r}; allowed: a finite number")
    rslora = cfg.get("use_rslora", False)
    if not isinstance(rslora, bool):
        raise CheckpointError(f"{cfg_path}: use_rslora is {rslora!r}; allowed: true or false")
    targets = cfg.get("target_modules")
    known = {suffix.rsplit(".", 1)[1] for suffix in _suffixes(config)}
    if isinstance(targets, list):  # peft matches an entry against a module name's end: "q_proj", "...0.mlp.up_proj"
        if not all(isinstance(name, str) for name in targets):
            raise CheckpointError(f"{cfg_path}: target_modules is {targets!r}; allowed: module names")
        targets = sorted({name.rsplit(".", 1)[-1] for name in targets})
        for name in targets:
            if name not in known:
                raise CheckpointError(f"{cfg_path}: target module {name!r} is not one awqinfer can adapt; allowed: "
                                      f"{', '.join(sorted(known))}")
    elif not isinstance(targets, str):  # a regular expression, or "all-linear": the tensors say which
        raise CheckpointError(f"{cfg_path}: target_modules is {targets!r}; allowed: a list of module names or a "
                              "pattern")
    return rank, alpha / (math.sqrt(rank) if rslora else rank), targets


def _suffixes(config: ModelConfig) -> list[str]:
    """The seven adaptable modules' names within a layer, e.g. 'self_attn.q_proj' (weights.py's projections)."""
    return [suffix for proj in projections(config).values() for suffix, _ in proj.parts]


def _pairs(ckpt: Checkpoint, config: ModelConfig) -> set[tuple[int, str]]:
    """Every (layer, module name) the file adapts, each with both its lora_A and lora_B tensors."""
    where = ckpt.directory / WEIGHTS_FILE
    modules = {f"model.layers.{l}.{suffix}": l for l in range(config.num_hidden_layers) for suffix in _suffixes(config)}
    seen: dict[tuple[int, str], set[str]] = {}
    for name in ckpt.tensors:
        match = TENSOR.fullmatch(name)
        if match is None:
            what = next((w for key, w in FOREIGN if key in name), None)
            raise CheckpointError(f"{where}: tensor {name!r} " + (f"belongs to {what}, which awqinfer does not "
                                  "support" if what else "is not a LoRA weight (lora_A/lora_B) awqinfer can apply"))
        module = match["module"]
        if module not in modules:
            raise CheckpointError(f"{where}: tensor {name!r} adapts {module!r}, which this model does not have "
                                  f"(an adapter for another architecture or size?); allowed: "
                                  f"model.layers.0..{config.num_hidden_layers - 1} q/k/v/o/gate/up/down_proj")
        seen.setdefault((modules[module], module), set()).add(match["which"])
    if not seen:
        raise CheckpointError(f"{where}: holds no LoRA tensors")
    for (_, module), which in seen.items():
        if which != {"A", "B"}:
            missing = "lora_B" if "A" in which else "lora_A"
            raise CheckpointError(f"{where}: {module} has no {missing} tensor")
    return set(seen)


def _tensor(ckpt: Checkpoint, name: str, shape: tuple[int, int]) -> np.ndarray:
    """A lora_A/lora_B tensor checked for dtype, shape and finite values, as f32."""
    info = ckpt.info(name)
    if info.dtype not in FLOAT_DTYPES:
        raise CheckpointError(f"{info.path}: tensor {name!r} has dtype {info.dtype}, expected {' or '.join(FLOAT_DTYPES)}")
    if tuple(info.shape) != shape:
        raise CheckpointError(f"{info.path}: tensor {name!r} has shape {tuple(info.shape)}, expected {shape} "
                              "(rank r from adapter_config.json; in/out features from the model)")
    value = ckpt.to_float32(name)
    if not np.isfinite(value).all():
        raise CheckpointError(f"{info.path}: tensor {name!r} holds NaN or infinite values")
    return value


def _fuse(ckpt: Checkpoint, config: ModelConfig, pairs: set, rank: int, scale: float) -> dict:
    """The adapter's A and B laid out on the fused projections (see Adapter), each tensor checked."""
    L = config.num_hidden_layers
    out = {}
    for proj_name, proj in projections(config).items():
        if not any((l, module) in pairs for l in range(L) for module, _, _ in proj.modules(l)):
            continue
        a = np.zeros((L, len(proj.parts) * rank, proj.in_features), np.float32)
        b = np.zeros((L, proj.out_features, rank), np.float32)
        for l in range(L):
            for p, (module, n_out, rows) in enumerate(proj.modules(l)):
                if (l, module) in pairs:
                    prefix = f"base_model.model.{module}"
                    a[l, p * rank:(p + 1) * rank] = _tensor(ckpt, f"{prefix}.lora_A.weight", (rank, proj.in_features))
                    b[l, rows] = _tensor(ckpt, f"{prefix}.lora_B.weight", (n_out, rank)) * np.float32(scale)
        out[proj_name] = (a, b)
    return out
