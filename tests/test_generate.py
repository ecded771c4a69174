"""generate_tokens' front-end hooks: the prompt in chunks (progress, same logits), and cancellation."""

import threading

import numpy as np
import pytest

import awqinfer
from awqinfer.engine.text.generate import PREFILL_CHUNK, prefill
from awqinfer.engine.text.inputs import parse_inputs
from checkpoints import make_model


@pytest.fixture(scope="module")
def long_llm(tmp_path_factory):
    """A tiny Llama with room for prompts of several prefill chunks."""
    return awqinfer.load(make_model(tmp_path_factory.mktemp("long"), "llama", max_positions=2048))


def test_chunked_prefill_reports_progress_and_equals_one_call(long_llm):
    model = long_llm.model
    ids = list(np.random.default_rng(0).integers(3, model.config.vocab_size, 2 * PREFILL_CHUNK + 88))
    progress = []
    cache = model.new_cache(len(ids))
    chunked = prefill(model, cache, ids, on_prefill=lambda done, total: progress.append((done, total)))
    assert progress == [(PREFILL_CHUNK, len(ids)), (2 * PREFILL_CHUNK, len(ids)), (len(ids), len(ids))]
    assert cache.pos == len(ids)
    whole_cache = model.new_cache(len(ids))
    whole = model.forward(ids, whole_cache, last_only=True)[0]
    np.testing.assert_allclose(chunked, whole, rtol=1e-4, atol=1e-4 * np.abs(whole).max())
    np.testing.assert_allclose(cache.k, whole_cache.k, rtol=1e-4, atol=1e-5)


def test_cancel_during_prefill_stops_before_the_next_chunk(long_llm):
    cancel = threading.Event()
    seen = []

    def on_prefill(done, total):
        seen.append(done)
        cancel.set()  # the client leaves after the first chunk

    prompt = "word " * (2 * PREFILL_CHUNK)
    stream = long_llm.run({"prompt": prompt, "stream": True, "max_tokens": 5}, cancel=cancel, on_prefill=on_prefill)
    assert list(stream) == []  # nothing generated, and the stream just ends
    assert seen == [PREFILL_CHUNK]
    with pytest.raises(awqinfer.Cancelled):
        long_llm.run({"prompt": prompt, "max_tokens": 5}, cancel=cancel)


def test_cancel_during_decode_stops_within_one_step(long_llm):
    cancel = threading.Event()
    inputs = {"prompt": "Hello", "stream": True, "max_tokens": 50, "temperature": 1.0, "seed": 3}
    full = list(long_llm.run(inputs))
    got = []
    for chunk in long_llm.run(inputs, cancel=cancel):
        got.append(chunk)
        if len(got) == 2:
            cancel.set()
    assert got == full[:2] and len(full) > 3  # the same first chunks, then nothing more


def test_kv_cache_bytes_count_live_caches_only(long_llm):
    """Model.kv_cache_bytes (a server's KV metric): a running generation's cache, and nothing once it ends."""
    model = long_llm.model
    c = model.config
    assert model.kv_cache_bytes == 0
    stream = long_llm.run({"prompt": "Hello", "stream": True, "max_tokens": 40, "temperature": 0})
    next(stream)
    prompt_len = len(long_llm.prompt_ids(parse_inputs({"prompt": "Hello"})))
    per_position = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4  # k and v, f32
    assert model.kv_cache_bytes == (prompt_len + 40 - 1) * per_position
    stream.close()  # a client that leaves: the cache goes with the generator
    assert model.kv_cache_bytes == 0
    long_llm.run({"prompt": "Hello", "max_tokens": 3})
    caches = [model.new_cache(7), model.new_cache(9)]
    assert model.kv_cache_bytes == 16 * per_position
    del caches
    assert model.kv_cache_bytes == 0
