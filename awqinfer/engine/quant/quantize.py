"""Float checkpoint -> AWQ 4-bit checkpoint in AutoAWQ's exact "gemm" layout, one layer at a time.

    for each decoder layer l:
        load layer l in f32                          (model/weights.py's load_layer)
        [awq] run the calibration activations through it, search per-channel
              scales and clipping ranges, fold the scales into the previous op
              (awq_search.py; calibration text from calibration.py)
        round every linear to 4 bits per group       (rounding.py)
        write qweight / qzeros / scales, norms and biases in fp16
    copy embeddings, the final norm and lm_head in fp16; config.json with
    quantization_config; tokenizer files; safetensors sharded past checkpoint.SHARD_BYTES.

The result is what AutoAWQ's ``save_quantized`` writes: decoder linears become
``qweight`` int32 [K, N/8], ``qzeros`` int32 [K/g, N/8], ``scales`` fp16 [K/g, N]
(packing in checkpoint/awq_layout.py), everything else fp16, ``torch_dtype`` float16.
Only one layer (plus the calibration activations) is in memory at a time.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ...errors import CheckpointError, InputError
from ..checkpoint.config import ModelConfig, QuantConfig
from ..checkpoint.safetensors import Checkpoint, ShardWriter
from ..model.linear import Embedding
from ..model.weights import IGNORED_SUFFIXES, LAYER_NORMS, LayerWeights, load_layer, projections
from ..text.tokenizer import Tokenizer
from .calibration import calibration_windows
from .layerwise import METHODS, LayerQuantizer
from .rounding import awq_tensors, rtn_quantize

AWQ_SUFFIXES = (".qweight", ".qzeros", ".scales")
DEFAULT_METHOD = "awq-gptq"  # the best measured (benchmarks/RESULTS.md, the quantizer's section)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json")


def quantize(src: str | Path, out: str | Path, *, method: str = DEFAULT_METHOD, group_size: int = 128,
             calib: str | Path | None = None, samples: int = 128, seq_len: int = 512,
             progress: bool = True, on_layer=None) -> Path:
    """Quantize the float Llama/Qwen2 checkpoint ``src`` to an AWQ 4-bit checkpoint in ``out``; returns ``out``.

    method: one of METHODS (layerwise.py): 'awq-gptq' (AWQ's scales and clipping, then GPTQ's
    error feedback in act order, the scales refit, each layer calibrated on the rounded ones before
    it), 'awq' (AWQ's scales and clipping, rounded to nearest), 'gptq', or 'rtn' (plain
    round-to-nearest; no calibration). The calibrated ones run ``samples`` windows of
    ``seq_len`` tokens of ``calib`` (a UTF-8 text file) or of the built-in set (calibration.py).
    With ``progress``, a bar and each layer's time and the peak memory so far go to stderr;
    ``on_layer(layer, seconds, peak_bytes)``, if given, is called after each layer with the same.
    """
    src, out = Path(src), Path(out)
    config = ModelConfig.load(src)
    _check(config, src, out, method, group_size, samples, seq_len)
    ckpt = Checkpoint(src)
    steps = METHODS[method]
    calibrated = None
    if steps.calibrated:
        ids = calibration_windows(Tokenizer(src), calib, samples, seq_len)
        name = "model.embed_tokens.weight"
        embed = Embedding(ckpt.get(name), bf16=ckpt.info(name).dtype == "BF16")
        calibrated = LayerQuantizer(config, embed(ids), group_size, steps)  # (samples, seq_len, H)

    out.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out)
    layer_prefixes = [f"model.layers.{l}." for l in range(config.num_hidden_layers)]
    bar = tqdm(range(config.num_hidden_layers), desc=f"quantize ({method})", unit="layer", disable=not progress)
    for l in bar:
        started = time.perf_counter()
        layer = load_layer(ckpt, config, l)
        if calibrated is not None:
            rounded = calibrated.layer(layer)
        else:
            rounded = {name: rtn_quantize(getattr(layer, name).weight, group_size) for name in projections(config)}
        tensors = layer_tensors(config, l, layer, rounded)
        known = {f"{m}.{suffix}" for m in layer_modules(config, l) for suffix in ("weight", "bias")}
        stray = sorted(n for n in ckpt.tensors if n.startswith(layer_prefixes[l]) and n not in known
                       and not n.endswith(IGNORED_SUFFIXES))
        if stray:
            raise CheckpointError(f"{src}: unknown tensor(s) {', '.join(map(repr, stray[:5]))} in layer {l}")
        for name, t in tensors.items():
            writer.add(name, t if name.endswith(AWQ_SUFFIXES) else _fp16(name, t))
        seconds, peak = time.perf_counter() - started, peak_rss()
        if progress:
            # stderr, as the bar: stdout may be a reply (run/chat importing a GGUF file on first use)
            bar.write(f"layer {l}: {seconds:.1f} s, peak memory {peak / 1e9:.2f} GB", file=sys.stderr)
        if on_layer is not None:
            on_layer(l, seconds, peak)
    for name in ckpt.tensors:  # embeddings, final norm, lm_head: kept in fp16, as AutoAWQ stores them
        if not name.startswith("model.layers.") and not name.endswith(IGNORED_SUFFIXES):
            writer.add(name, _fp16(name, ckpt.to_float32(name)))
            ckpt.release(name)
    writer.close()
    _write_config(config, group_size, out)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
    return out


def layer_tensors(config: ModelConfig, l: int, layer: LayerWeights, rounded: dict) -> dict[str, np.ndarray]:
    """The HF-named tensors of a quantized decoder layer, the inverse of ``load_layer``.

    ``rounded``: each fused linear's (codes, zeros, scales) by LayerWeights field. Fused
    linears are split back into their modules: ``{module}.qweight`` / ``.qzeros`` / ``.scales``
    in AutoAWQ's layout, ``{module}.bias`` (N,) f32, and the two norms (H,) f32.
    """
    out = {f"model.layers.{l}.{n}.weight": w for n, w in zip(LAYER_NORMS, (layer.input_norm, layer.post_norm))}
    for name, p in projections(config).items():
        linear = getattr(layer, name)
        codes, zeros, scales = rounded[name]
        for module, _, rows in p.modules(l):
            for suffix, packed in awq_tensors(codes[rows], zeros[rows], scales[rows]).items():
                out[f"{module}.{suffix}"] = packed
            if linear.bias is not None:
                out[f"{module}.bias"] = linear.bias[rows]
    return out


def layer_modules(config: ModelConfig, l: int) -> list[str]:
    """The HF module names of decoder layer ``l``: its two norms and its linears."""
    names = [f"model.layers.{l}.{n}" for n in LAYER_NORMS]
    return names + [module for p in projections(config).values() for module, _, _ in p.modules(l)]


def peak_rss() -> int:
    """The most memory this process has held so far, in bytes (0 where the platform does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def _check(config: ModelConfig, src: Path, out: Path, method: str, group_size: int, samples: int,
           seq_len: int) -> None:
    """Reject what cannot be quantized before any work, naming the argument or the shape at fault."""
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0 or group_size % 8:
        raise InputError(f"group_size must be a positive multiple of 8, got {group_size!r}")
    for name, value in (("samples", samples), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if config.quant is not None:
        raise CheckpointError(f"{src}: already quantized ({config.quant.to_dict()['quant_method']}); "
                              "give a float16, bfloat16 or float32 checkpoint")
    if out.resolve() == src.resolve():
        raise InputError(f"the output directory must differ from the source {src}")
    for name, p in projections(config).items():
        if p.in_features % group_size:
            raise InputError(f"group_size {group_size} does not divide in_features {p.in_features} of "
                             f"{', '.join(s for s, _ in p.parts)}")
        for suffix, n in p.parts:
            if n % 8:
                raise CheckpointError(f"{src}: {suffix} has {n} outputs; AWQ packing needs a multiple of 8")


def _fp16(name: str, t: np.ndarray) -> np.ndarray:
    """``t`` as fp16; a value beyond fp16's range is an error, not a silent inf."""
    half = np.asarray(t, dtype=np.float32).astype(np.float16)
    if not np.isfinite(half).all() and np.isfinite(t).all():
        raise CheckpointError(f"tensor {name!r} holds values beyond float16's range (max |x| = {np.abs(t).max():g})")
    return half


def _write_config(config: ModelConfig, group_size: int, out: Path) -> None:
    """The source config.json plus AutoAWQ's quantization_config, with fp16 as the stored dtype."""
    d = dict(config.raw)
    d["quantization_config"] = QuantConfig(group_size=group_size).to_dict()
    d["torch_dtype"] = "float16"
    if "dtype" in d:  # transformers 5 writes this name
        d["dtype"] = "float16"
    (out / "config.json").write_text(json.dumps(d, indent=2) + "\n", encoding="utf-8")
