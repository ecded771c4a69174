"""Shared fixtures: tiny real checkpoints of each architecture, written once per session."""

import pytest

from checkpoints import make_model


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """Llama, fp32, GQA (4 heads / 2 KV heads), Llama-2 tokenizer and chat template."""
    return make_model(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory):
    """Qwen2, fp32, q/k/v bias, byte-level tokenizer, ChatML template."""
    return make_model(tmp_path_factory.mktemp("qwen2"), "qwen2")


@pytest.fixture(scope="session")
def tiny_llama_awq(tmp_path_factory):
    """Llama, AWQ 4-bit gemm (group 32), linear RoPE scaling factor 4 as DeepSeek-Coder."""
    return make_model(tmp_path_factory.mktemp("llama_awq"), "llama", awq_group=32,
                      rope_scaling={"rope_type": "linear", "factor": 4.0})


@pytest.fixture(scope="session")
def tiny_qwen2_awq(tmp_path_factory):
    """Qwen2, AWQ 4-bit gemm (group 64), sharded safetensors."""
    return make_model(tmp_path_factory.mktemp("qwen2_awq"), "qwen2", awq_group=64, shards=2)
