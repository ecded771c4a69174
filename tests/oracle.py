"""Oracles: Hugging Face transformers on the same weights, and plain-numpy readings of awqinfer's layouts.

An AWQ checkpoint is first turned into its dense fp32 twin with the test
suite's own AutoAWQ-layout dequantiser (tests/checkpoints.py), so the oracle
never goes through awqinfer's unpacking.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from checkpoints import dequantized


def kernel_layout_weight(qweight, scales, zeros) -> np.ndarray:
    """Plain numpy dequantisation of awqinfer's AWQ kernel layout: nibble i of word j is input 8j+i.

    qweight (N, K/8) int32; scales (N, G) f32; zeros (N, G) u8 -> W (N, K) f64 = (q - zero) * scale.
    """
    n, words = qweight.shape
    q = (qweight.view(np.uint32)[:, :, None] >> (4 * np.arange(8, dtype=np.uint32))) & 15
    group = words * 8 // scales.shape[1]
    s = np.repeat(scales, group, axis=1).astype(np.float64)
    z = np.repeat(zeros, group, axis=1).astype(np.float64)
    return (q.reshape(n, words * 8).astype(np.float64) - z) * s


def int8_weight(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """(N, K) int8 and (N,) scales -> the float32 weight the int8 kernels compute with."""
    return q.astype(np.float32) * scales[:, None]


def fixed_point_activations(x: np.ndarray) -> np.ndarray:
    """x (..., K) f32 rounded as the fast decode path converts its AWQ inputs: one scale per 64 values.

    Plain numpy, natural order: scale = absmax / (127 * 128) of each block of 64, codes rint(x / scale).
    """
    blocks = x.reshape(*x.shape[:-1], -1, 64).astype(np.float32)
    scale = np.abs(blocks).max(axis=-1, keepdims=True) / np.float32(127 * 128)
    codes = np.rint(blocks / np.where(scale > 0, scale, 1))
    return (codes * scale).reshape(x.shape).astype(np.float32)


def dense_twin(src: Path, dst: Path) -> Path:
    """Copy a checkpoint dir as plain fp32 safetensors (AWQ tensors dequantised) for transformers."""
    from safetensors.numpy import save_file
    from safetensors.torch import load_file

    dst.mkdir(parents=True, exist_ok=True)
    config = json.loads((src / "config.json").read_text())
    quant = config.pop("quantization_config", None)
    config["torch_dtype"] = "float32"
    (dst / "config.json").write_text(json.dumps(config))
    tensors = {}
    for f in sorted(src.glob("*.safetensors")):
        tensors.update({k: (v.float() if v.is_floating_point() else v).numpy() for k, v in load_file(str(f)).items()})
    if quant:
        tensors = dequantized(tensors, quant["group_size"])
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(dst / "model.safetensors"))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    return dst


def hf_model(directory: Path):
    """transformers' AutoModelForCausalLM on a dense checkpoint, fp32, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def hf_logits(model, ids: list[int], prefill: int) -> np.ndarray:
    """Logits (len(ids), vocab) with the schedule awqinfer uses: ids[:prefill] at once, then one at a time."""
    import torch

    with torch.no_grad():
        out = model(torch.tensor([ids[:prefill]]), use_cache=True)
        rows, past = [out.logits[0]], out.past_key_values
        for i in ids[prefill:]:
            out = model(torch.tensor([[i]]), past_key_values=past, use_cache=True)
            rows.append(out.logits[0])
            past = out.past_key_values
    return torch.cat(rows).numpy()
