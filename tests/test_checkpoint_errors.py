"""Malformed and unsupported checkpoints: each is a clear CheckpointError naming the file and tensor or key."""

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import awqinfer
from awqinfer import CheckpointError, InputError
from checkpoints import make_model


@pytest.fixture
def model_dir(tmp_path):
    return make_model(tmp_path / "m", "llama", layers=1)


@pytest.fixture
def awq_dir(tmp_path):
    return make_model(tmp_path / "q", "qwen2", layers=1, awq_group=32)


def rewrite(directory, change):
    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def edit_config(directory, change):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def expect(directory, *fragments):
    with pytest.raises(CheckpointError) as e:
        awqinfer.load(directory)
    for fragment in fragments:
        assert fragment in str(e.value), str(e.value)


def test_missing_tensor(model_dir):
    rewrite(model_dir, lambda t: t.pop("model.layers.0.mlp.up_proj.weight"))
    expect(model_dir, "model.layers.0.mlp.up_proj.weight", "missing")


def test_wrong_shape(model_dir):
    rewrite(model_dir, lambda t: t.update({"model.norm.weight": np.ones(63, np.float32)}))
    expect(model_dir, "model.safetensors", "model.norm.weight", "(63,)", "(64,)")


def test_wrong_dtype(model_dir):
    rewrite(model_dir, lambda t: t.update({"model.norm.weight": np.ones(64, np.int32)}))
    expect(model_dir, "model.norm.weight", "I32")


def test_awq_wrong_dtype_and_shape(awq_dir):
    name = "model.layers.0.self_attn.k_proj.qweight"
    rewrite(awq_dir, lambda t: t.update({name: t[name].astype(np.float32)}))
    expect(awq_dir, name, "F32")
    rewrite(awq_dir, lambda t: t.update({name: np.zeros((64, 3), np.int32)}))
    expect(awq_dir, name, "(64, 3)")


def test_unknown_tensor(model_dir):
    rewrite(model_dir, lambda t: t.update({"model.layers.0.mystery.weight": np.ones(3, np.float32)}))
    expect(model_dir, "unknown tensor", "model.layers.0.mystery.weight")


def test_truncated_file(model_dir):
    path = model_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    expect(model_dir, "model.safetensors", "truncated")
    path.write_bytes(data[:5])
    expect(model_dir, "truncated")


def test_corrupt_header(model_dir):
    path = model_dir / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 10) + b"{not json}" + b"\0" * 64)
    expect(model_dir, "corrupt safetensors header")


def test_unknown_architecture(model_dir):
    edit_config(model_dir, lambda c: c.update({"architectures": ["MistralForCausalLM"]}))
    expect(model_dir, "config.json", "MistralForCausalLM")


def test_missing_config_key(model_dir):
    edit_config(model_dir, lambda c: c.pop("hidden_size"))
    expect(model_dir, "config.json", "hidden_size")


@pytest.mark.parametrize("quant,fragment", [
    ({"quant_method": "gptq", "bits": 4}, "gptq"),
    ({"quant_method": "awq", "bits": 8, "group_size": 32}, "bits=8"),
    ({"quant_method": "awq", "bits": 4, "group_size": 32, "version": "gemv"}, "gemv"),
    ({"quant_method": "awq", "bits": 4, "group_size": 30}, "group_size"),
])
def test_unsupported_quantization(awq_dir, quant, fragment):
    edit_config(awq_dir, lambda c: c.update({"quantization_config": {**c["quantization_config"], **quant}}))
    expect(awq_dir, "config.json", fragment)


def test_group_size_must_divide_in_features(awq_dir):
    edit_config(awq_dir, lambda c: c["quantization_config"].update({"group_size": 48}))
    expect(awq_dir, "group_size 48 does not divide")


def test_modules_to_not_convert_is_honoured(tmp_path):
    """A module named in modules_to_not_convert is read as a float weight, not as AWQ tensors."""
    from checkpoints import quantize_checkpoint, random_weights, tiny_config, write_checkpoint

    config = tiny_config("llama", layers=2)
    tensors = quantize_checkpoint(random_weights(config), 32, skip=("mlp",))
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True,
                                     "version": "gemm", "modules_to_not_convert": ["mlp"]}
    llm = awqinfer.load(write_checkpoint(tmp_path / "m", config, tensors, tokenizer="sentencepiece"))
    layer = llm.model.weights.layers[0]
    assert type(layer.qkv).__name__ == "AwqLinear" and type(layer.gate_up).__name__ == "DenseLinear"


def test_missing_shard(tmp_path):
    d = make_model(tmp_path / "m", "llama", layers=1, shards=2)
    (d / "model-00002-of-00002.safetensors").unlink()
    expect(d, "model-00002-of-00002.safetensors", "missing")


def test_not_a_checkpoint(tmp_path):
    expect(tmp_path, "no config.json")
    with pytest.raises(awqinfer.ModelNotFoundError):
        awqinfer.load(tmp_path / "nowhere")


def test_forward_rejects_bad_ids_and_caches(tiny_llama, tmp_path):
    llm = awqinfer.load(tiny_llama)
    cache = llm.model.new_cache(8)
    for ids, fragment in [([], "non-empty"), ([1, 512], "512"), ([-1], "-1"), ([1.5], "integers"),
                          ([[1, 2]], "1-D"), (list(range(9)), "do not fit"), ([True], "integers")]:
        with pytest.raises(InputError, match=fragment):
            llm.model.forward(ids, cache)
    assert cache.pos == 0  # a rejected call leaves the cache untouched
    other = awqinfer.load(make_model(tmp_path / "one_layer", "llama", layers=1)).model.new_cache(8)
    with pytest.raises(InputError, match="KVCache"):
        llm.model.forward([1, 2], other)  # a cache shaped for another model
    for bad in (0, -3, 10**9, 2.5, True):
        with pytest.raises(InputError, match="cache size"):
            llm.model.new_cache(bad)
    with pytest.raises(InputError, match="KVCache"):
        llm.model.forward([1], object())


def test_weights_are_memory_mapped(tiny_llama):
    """The embedding table is a view of the file, not a copy (a 7B model loads in its file size)."""
    table = awqinfer.load(tiny_llama).model.weights.embed.table
    base = table
    while getattr(base, "base", None) is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap)


def test_a_model_bigger_than_memory_is_refused_before_loading(model_dir, monkeypatch):
    """Weights that will not fit what this process can still take: a CheckpointError, not an OOM kill."""
    from awqinfer.engine.model import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 100_000)
    expect(model_dir, "its weights need 0.00 GiB of memory once loaded", "can take 0.00 GiB")
