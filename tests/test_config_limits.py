"""config.json from anywhere: a load either works (with finite RoPE tables) or raises CheckpointError.

Never a MemoryError, a crash, a hang or a NaN. Each load runs in a forked child with an
address-space limit (isolation.py), so a regression that allocates from config values alone
fails its test instead of taking the machine down. The config's numbers reach the arithmetic
only through RoPE and the norm's epsilon (every size must match a tensor), so the fuzzed loads
check the RoPE tables at both ends of the context, and the extreme configs that load are run
through a forward pass.
"""

import json
import shutil
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import awqinfer
from awqinfer.engine.model.cache import max_context
from awqinfer.engine.model.rope import cos_sin
from checkpoints import make_model
from isolation import isolated  # noqa: F401 - the fixture

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and /proc: Linux only")

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
# keys the loader reads that the tiny configs leave out, each with a value of its real type
OPTIONAL = {"head_dim": 16, "num_key_value_heads": 2, "attention_bias": False, "mlp_bias": False,
            "use_sliding_window": False, "pretraining_tp": 1, "hidden_act": "silu",
            "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}, "rope_parameters": {"rope_theta": 10000.0}}
STRINGS = ["", "silu", "gelu", "llama3", "linear", "dynamic", "default", "awq", "gptq", "gemm", "gemv",
           "LlamaForCausalLM", "Qwen2ForCausalLM", "mlp", "NaN", "1e9", "\u0000"]
INTS = [0, 1, -1, 2, 3, 4, 8, 15, 16, 32, 64, 512, 1024, 1 << 16, 1 << 24, 1 << 31, 1 << 63, 10**18, 10**100]


def same_type(value):
    """Values of ``value``'s JSON type, anywhere: huge, zero, negative, NaN, empty, nested the same."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.sampled_from(INTS) | st.integers()
    if isinstance(value, float):
        return st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 1e-300, 1e300])
    if isinstance(value, str):
        return st.sampled_from(STRINGS) | st.text(max_size=12)
    if isinstance(value, list):
        return st.lists(same_type(value[0]) if value else st.none(), max_size=3)
    if isinstance(value, dict):
        return st.fixed_dictionaries({}, optional={k: same_type(v) for k, v in value.items()})
    return st.none()


@st.composite
def fuzzed(draw, base: dict) -> dict:
    """``base`` with one to four keys given another value of their type, dropped, or added."""
    config = json.loads(json.dumps(base))
    keys = draw(st.sets(st.sampled_from(sorted({*base, *OPTIONAL})), min_size=1, max_size=4))
    for key in sorted(keys):
        if key in base and draw(st.integers(0, 7)) == 0:
            del config[key]
        else:
            config[key] = draw(same_type(base.get(key, OPTIONAL.get(key))))
    return config


def load_case(directory: str):
    """In the isolated child: load; True when the RoPE tables are finite at both ends of the context."""
    c = awqinfer.load(directory).model.config
    tables = [cos_sin(c.rope, c.head_dim, c.max_position_embeddings, start, 2) for start in (0, max_context(c) - 2)]
    return bool(all(np.isfinite(t).all() for pair in tables for t in pair))


@pytest.fixture(scope="module")
def bases(tmp_path_factory, isolated):
    """Two tiny checkpoints (dense Llama with llama3 RoPE, AWQ Qwen2) and their pristine config.json."""
    root = tmp_path_factory.mktemp("fuzz")
    dirs = [make_model(root / "llama", "llama", layers=1, rope_scaling=LLAMA3),
            make_model(root / "qwen2_awq", "qwen2", layers=1, awq_group=32)]
    for d in dirs:  # loads Numba's cached AWQ repacking once, for every child to inherit
        assert isolated.warm("test_config_limits:load_case", str(d))["value"] is True
    return [(d, json.loads((d / "config.json").read_text())) for d in dirs]


def expect_load_or_checkpoint_error(isolated, directory):
    result = isolated.run("test_config_limits:load_case", str(directory), memory_mb=1024, seconds=120)
    assert result["status"] in ("returned", "raised"), result  # not killed: no hang, no crash
    if result["status"] == "returned":
        assert result["value"] is True, result  # finite RoPE tables
    else:
        assert "CheckpointError" in result["types"], result
        assert "MemoryError" not in result["message"], result
    assert result["grew_mb"] < 512, result
    return result


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_config_loads_or_is_a_checkpoint_error(isolated, bases, data):
    directory, base = bases[data.draw(st.integers(0, len(bases) - 1))]
    config = data.draw(fuzzed(base))
    text = json.dumps(config)  # NaN and Infinity as Python's json writes (and reads) them
    (directory / "config.json").write_text(text)
    try:
        result = expect_load_or_checkpoint_error(isolated, directory)
        event("loaded" if result["status"] == "returned" else result["message"].split(": ", 1)[1][:40])
    finally:
        (directory / "config.json").write_text(json.dumps(base))


@pytest.mark.parametrize("change", [
    {"num_hidden_layers": 1024},  # stacks of 1,024 layers; the checkpoint holds one
    {"num_attention_heads": 1024, "num_key_value_heads": 1024, "head_dim": 1024, "num_hidden_layers": 1024},
    {"intermediate_size": 1 << 18},
    {"vocab_size": 1 << 22},
    {"max_position_embeddings": 1 << 24, "rope_scaling": {"rope_type": "dynamic", "factor": 1.0}},
])
def test_sizes_claimed_by_config_alone_allocate_nothing(isolated, tmp_path, change):
    """The largest sizes the config accepts, over a one-layer checkpoint: refused by the tensors' shapes
    before any stack sized from config.json is allocated (or, for the context, loaded as it is)."""
    directory = make_model(tmp_path / "m", "llama", layers=1)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **change}))
    result = expect_load_or_checkpoint_error(isolated, directory)
    assert result["grew_mb"] < 100, result
    if "max_position_embeddings" not in change:
        assert result["status"] == "raised" and "tensor 'model." in result["message"], result


@pytest.mark.parametrize("change", [
    {"rope_theta": 1e15, "rms_norm_eps": 1.0},
    {"rope_theta": 1.0001, "rms_norm_eps": 1e-300},
    {"rope_scaling": {"rope_type": "dynamic", "factor": 1024.0}, "max_position_embeddings": 16},
    {"rope_scaling": {"rope_type": "linear", "factor": 1024.0}},
    {"rope_scaling": {"rope_type": "llama3", "factor": 1024.0, "low_freq_factor": 1e-9, "high_freq_factor": 1024.0,
                      "original_max_position_embeddings": 1}},
])
def test_extreme_configs_that_load_give_finite_logits(tmp_path, change):
    """The edges of every range the config accepts still compute: finite logits, past the trained context too."""
    directory = make_model(tmp_path / "m", "llama", layers=1)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **change}))
    model = awqinfer.load(directory).model
    cache = model.new_cache(24)
    logits = model.forward(list(range(1, 21)), cache)
    logits = np.concatenate([logits, *(model.forward([i], cache) for i in range(3))])
    assert np.isfinite(logits).all()


def test_a_config_copied_from_another_model_is_named(tmp_path):
    """Tensors that disagree with config.json: the error names the tensor and both shapes."""
    directory = make_model(tmp_path / "m", "llama", layers=1)
    shutil.copy(make_model(tmp_path / "other", "llama", layers=1, hidden=32) / "config.json", directory)
    with pytest.raises(awqinfer.CheckpointError, match=r"model.embed_tokens.weight.*\(512, 64\), expected \(512, 32\)"):
        awqinfer.load(directory)


def available_case():
    from awqinfer.engine.model.memory import available_bytes

    return available_bytes()


def test_available_memory_counts_the_address_space_limit(isolated):
    """RLIMIT_AS (ulimit -v) bounds what a load may take, as MemAvailable and cgroups do."""
    result = isolated.run("test_config_limits:available_case", memory_mb=300)
    assert result["status"] == "returned" and 0 < result["value"] <= 300 << 20, result
