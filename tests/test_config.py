"""config.json parsing: both RoPE forms, EOS ids from two files, derived fields."""

import json

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
