"""generate_tokens' front-end hooks: the prompt in chunks (progress, same logits), and cancellation."""

import threading

import numpy as np
import pytest

import awqinfer
from awqinfer.engine.text.generate import PREFILL_CHUNK, Sequence
from awqinfer.engine.text.sampling import SamplingParams
from checkpoints import make_model


@pytest.fixture(scope="module")
def long_llm(tmp_path_factory):
    """A tiny Llama with room for prompts of several prefill chunks."""
    return awqinfer.load(make_model(tmp_path_factory.mktemp("long"), "llama", max_positions=2048))


def test_chunked_prefill_reports_progress_and_equals_one_call(long_llm):
    model = long_llm.model
    ids = list(np.random.default_rng(0).integers(3, model.config.vocab_size, 2 * PREFILL_CHUNK + 88))
    progress = []
    seq = Sequence(model, ids, SamplingParams(max_tokens=1), frozenset(),
                   on_prefill=lambda done, total: progress.append((done, total)))
    seq.start()
    while not seq.prefill_chunk():
        pass
    chunked, cache = seq.logits, seq.cache
    assert progress == [(PREFILL_CHUNK, len(ids)), (2 * PREFILL_CHUNK, len(ids)), (len(ids), len(ids))]
    assert cache.pos == len(ids)
    whole_cache = model.new_cache(len(ids))
    whole = model.forward(ids, whole_cache, last_only=True)[0]
    np.testing.assert_allclose(chunked, whole, rtol=1e-4, atol=1e-4 * np.abs(whole).max())
    as_f32 = lambda c: c.k[:, :, : len(ids)].view(np.float16).astype(np.float32)  # a float16 cache's bits
    np.testing.assert_allclose(as_f32(cache), as_f32(whole_cache), rtol=2.0**-10, atol=1e-5)


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
