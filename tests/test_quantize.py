"""The quantizer: AutoAWQ's layout checked by the independent packer, config and files, sharding, errors."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

import awqinfer
from awqinfer.engine import quantize as quantize_module
from awqinfer.engine.checkpoint import Checkpoint
from awqinfer.engine.config import ModelConfig
from awqinfer.engine.quantize import quantize
from awqinfer.errors import CheckpointError, InputError
from checkpoints import autoawq_unpack, awq_quantize, make_model

AWQ_CONFIG = {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm",
              "modules_to_not_convert": None}


def read_all(directory) -> dict:
    tensors = {}
    for f in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen2"])
def test_rtn_tensors_are_autoawq_round_to_nearest(fixture, request, tmp_path):
    src = request.getfixturevalue(fixture)
    out = quantize(src, tmp_path / "q", method="rtn", group_size=32, progress=False)
    source, written = read_all(src), read_all(out)
    linears = [n for n in source if n.endswith("_proj.weight")]
    assert linears
    for name in linears:
        module = name.removesuffix(".weight")
        expected = awq_quantize(source[name], 32)  # the test suite's own AutoAWQ packer
        for suffix in ("qweight", "qzeros", "scales"):
            got = written.pop(f"{module}.{suffix}")
            assert got.dtype == expected[suffix].dtype and got.shape == expected[suffix].shape, (module, suffix)
            np.testing.assert_array_equal(got, expected[suffix], err_msg=f"{module}.{suffix}")
        assert autoawq_unpack(expected["qweight"]).max() <= 15
    for name, t in written.items():  # embeddings, norms, biases, lm_head: fp16 copies
        assert t.dtype == np.float16, name
        np.testing.assert_array_equal(t, source[name].astype(np.float16), err_msg=name)
    assert set(written) == {n for n in source if not n.endswith("_proj.weight")}


def test_rtn_checkpoint_config_files_and_load(tiny_qwen2, tmp_path):
    out = quantize(tiny_qwen2, tmp_path / "q", method="rtn", group_size=32, progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"] == AWQ_CONFIG
    assert config["torch_dtype"] == "float16"
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (tiny_qwen2 / name).read_bytes()
    assert ModelConfig.load(out).quant.group_size == 32
    llm = awqinfer.load(out)
    assert np.isfinite(llm.model.forward([1, 2, 3], llm.model.new_cache(3))).all()


def test_large_checkpoints_are_sharded_with_an_index(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(quantize_module, "SHARD_BYTES", 64 * 1024)
    out = quantize(tiny_llama, tmp_path / "q", method="rtn", group_size=32, progress=False)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (out / "model.safetensors").exists() and not list(out.glob("*.partial"))
    single = quantize(tiny_llama, tmp_path / "one", method="rtn", group_size=32, progress=False)
    assert read_all(out).keys() == read_all(single).keys()
    assert set(Checkpoint(out).tensors) == set(index["weight_map"])


def test_bad_arguments_are_clear_errors(tiny_llama, tiny_llama_awq, tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        quantize(tmp_path / "missing", tmp_path / "q", method="rtn")
    with pytest.raises(InputError, match="group_size 48 does not divide in_features 64"):
        quantize(tiny_llama, tmp_path / "q", method="rtn", group_size=48)
    with pytest.raises(InputError, match="positive multiple of 8"):
        quantize(tiny_llama, tmp_path / "q", method="rtn", group_size=12)
    with pytest.raises(InputError, match="method must be one of"):
        quantize(tiny_llama, tmp_path / "q", method="gptq")
    with pytest.raises(CheckpointError, match="already quantized"):
        quantize(tiny_llama_awq, tmp_path / "q", method="rtn")
    with pytest.raises(InputError, match="must differ"):
        quantize(tiny_llama, tiny_llama, method="rtn")
