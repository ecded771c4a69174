"""config.json parsing: both RoPE forms, EOS ids from two files, derived fields, and impossible values refused.

(tests/test_config_limits.py loads fuzzed configs in limited processes.)
"""

import json

import pytest

from awqinfer import CheckpointError
from awqinfer.engine.checkpoint.config import ModelConfig, RopeConfig
from checkpoints import make_model, tiny_config


def test_rope_forms_parse_the_same():
    scaling = {"rope_type": "linear", "factor": 4.0}
    legacy = ModelConfig.from_dict(tiny_config("llama", rope_scaling=scaling))
    v5 = ModelConfig.from_dict(tiny_config("llama", rope_scaling=scaling, rope_form="v5"))
    assert legacy.rope == v5.rope == RopeConfig(theta=10000.0, type="linear", factor=4.0)
    old_key = tiny_config("llama")
    old_key["rope_scaling"] = {"type": "dynamic", "factor": 2.0}  # pre-4.45 spelling: "type"
    assert ModelConfig.from_dict(old_key).rope.type == "dynamic"


def test_qwen2_has_qkv_bias_and_derived_sizes():
    c = ModelConfig.from_dict(tiny_config("qwen2"))
    assert c.attention_bias and not c.o_bias
    assert (c.head_dim, c.q_size, c.kv_size) == (16, 64, 32)


def test_eos_ids_merge_config_and_generation_config(tmp_path):
    d = make_model(tmp_path / "m", "llama", layers=1)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    assert ModelConfig.load(d).eos_token_ids == (2, 7)


NAN, INF = float("nan"), float("inf")
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 128}


@pytest.mark.parametrize("change,words", [
    ({"num_hidden_layers": 10**6}, "'num_hidden_layers' must be an integer in 1..1,024"),
    ({"num_hidden_layers": 0}, "'num_hidden_layers'"),
    ({"num_hidden_layers": 2.0}, "'num_hidden_layers'"),
    ({"num_hidden_layers": "2"}, "'num_hidden_layers'"),
    ({"num_hidden_layers": True}, "'num_hidden_layers'"),
    ({"hidden_size": 1 << 20}, "'hidden_size'"),
    ({"intermediate_size": -192}, "'intermediate_size'"),
    ({"vocab_size": 10**9}, "'vocab_size'"),
    ({"num_attention_heads": 10**5}, "'num_attention_heads'"),
    ({"num_key_value_heads": 0}, "'num_key_value_heads'"),
    ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads=3"),
    ({"head_dim": 2}, "'head_dim' must be an integer in 4..1,024"),
    ({"head_dim": 18.0}, "'head_dim'"),
    ({"head_dim": 15}, "head_dim 15 must be even"),
    ({"hidden_size": 2, "num_attention_heads": 4, "num_key_value_heads": 4}, "'head_dim'"),  # 2 // 4 == 0
    ({"max_position_embeddings": 10**9}, "'max_position_embeddings' must be an integer in 1..16,777,216"),
    ({"rms_norm_eps": NAN}, "'rms_norm_eps' must be a number"),
    ({"rms_norm_eps": INF}, "'rms_norm_eps'"),
    ({"rms_norm_eps": 0}, "'rms_norm_eps'"),
    ({"rms_norm_eps": "1e-5"}, "'rms_norm_eps'"),
    ({"rms_norm_eps": None}, "'rms_norm_eps' is missing"),
    ({"rope_theta": 0.5}, "'rope_theta'"),
    ({"rope_theta": NAN}, "'rope_theta'"),
    ({"rope_theta": 1e300}, "'rope_theta'"),
    ({"rope_theta": [10000]}, "'rope_theta'"),
    ({"rope_scaling": "linear"}, "'rope_scaling' must be an object"),
    ({"rope_scaling": {"rope_type": "linear", "factor": "4"}}, "RoPE scaling factor"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 1e9}}, "RoPE scaling factor"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 0.5}}, "must be >= 1"),
    ({"rope_scaling": {"rope_type": ["linear"]}}, "unsupported RoPE scaling"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 1000.0}, "max_position_embeddings": 1 << 20},
     "extends the context to"),
    ({"rope_scaling": {**LLAMA3, "low_freq_factor": 4.0}}, "low_freq_factor < high_freq_factor"),
    ({"rope_scaling": {**LLAMA3, "original_max_position_embeddings": -1}}, "'original_max_position_embeddings'"),
    ({"rope_scaling": {**LLAMA3, "high_freq_factor": INF}}, "high_freq_factor"),
    ({"tie_word_embeddings": "false"}, "'tie_word_embeddings' must be true or false"),
    ({"attention_bias": 1}, "'attention_bias'"),
    ({"use_sliding_window": "no"}, "'use_sliding_window'"),
    ({"eos_token_id": "2"}, "'eos_token_id' must be a token id"),
    ({"eos_token_id": [2, -1]}, "'eos_token_id'"),
    ({"eos_token_id": [[2]]}, "'eos_token_id'"),
    ({"bos_token_id": 1.0}, "'bos_token_id'"),
    ({"architectures": "LlamaForCausalLM"}, "'architectures' must be a list"),
    ({"architectures": [["LlamaForCausalLM"]]}, "unsupported architecture"),
    ({"quantization_config": ["awq"]}, "'quantization_config' must be an object"),
    ({"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 32, "version": 2}}, "version 2"),
    ({"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 32, "modules_to_not_convert": "mlp"}},
     "modules_to_not_convert must be a list"),
])
def test_impossible_values_are_checkpoint_errors(change, words):
    """Every value is checked for type and for a range real checkpoints fit, naming the key."""
    config = {**tiny_config("llama"), **change}
    with pytest.raises(CheckpointError) as e:
        ModelConfig.from_dict(config, "m/config.json")
    assert str(e.value).startswith("m/config.json: ") and words in str(e.value), str(e.value)


def test_real_extremes_still_load():
    """The bounds are far past real checkpoints: Llama-3.1-405B's sizes and a 10M context parse."""
    config = {**tiny_config("llama"), "hidden_size": 16384, "intermediate_size": 53248, "num_hidden_layers": 126,
              "num_attention_heads": 128, "num_key_value_heads": 8, "vocab_size": 128256,
              "max_position_embeddings": 10_485_760, "rope_scaling": LLAMA3, "rope_theta": 500000.0,
              "eos_token_id": [128001, 128008, 128009], "bos_token_id": None, "tie_word_embeddings": None}
    c = ModelConfig.from_dict(config)
    assert (c.head_dim, c.rope.type, c.tie_word_embeddings) == (128, "llama3", False)
    assert c.eos_token_ids == (128001, 128008, 128009)


def test_generation_config_is_checked(tmp_path):
    d = make_model(tmp_path / "m", "llama", layers=1)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": ["</s>"]}))
    with pytest.raises(CheckpointError, match="generation_config.json: 'eos_token_id' must be a token id"):
        ModelConfig.load(d)
    (d / "generation_config.json").write_text("[2]")
    with pytest.raises(CheckpointError, match="generation_config.json: expected a JSON object"):
        ModelConfig.load(d)
