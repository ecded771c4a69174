"""Continuous batching: the batched step against each sequence alone, and the scheduler under many threads."""

import threading
import time

import numpy as np
import pytest

import awqinfer
from awqinfer.engine.model import Model
from awqinfer.engine.model.kv_budget import KV_BUDGET
from awqinfer.engine.text.generate import Sequence, generate_tokens
from awqinfer.engine.text.inputs import parse_inputs
from awqinfer.errors import InputError, QueueFull
from checkpoints import make_model

FIXTURES = ["tiny_llama", "tiny_qwen2_awq"]


def _prefilled(model, rng, lengths):
    """One cache per length, each holding that many random prompt tokens."""
    caches = []
    for n in lengths:
        cache = model.new_cache(n + 8)
        model.forward(rng.integers(0, model.config.vocab_size, n), cache)
        caches.append(cache)
    return caches


def _clone(model, caches):
    """Fresh caches with the same contents, so two paths can run from the same state."""
    out = []
    for cache in caches:
        twin = model.new_cache(cache.capacity)
        twin.ensure(cache.pos)
        twin.k[:, :, : cache.pos] = cache.k[:, :, : cache.pos]
        twin.v[:, :, : cache.pos] = cache.v[:, :, : cache.pos]
        twin.pos = cache.pos
        out.append(twin)
    return out


@pytest.mark.parametrize("fixture", FIXTURES)
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_a_sequence_in_a_batch_gets_its_logits_alone(fixture, batch, request):
    """Row b of a compiled batched step equals sequence b stepped alone (bitwise), at mixed positions."""
    model = Model.load(request.getfixturevalue(fixture))
    rng = np.random.default_rng(batch)
    caches = _prefilled(model, rng, [3, 40, 1, 17, 9][:batch])
    alone = _clone(model, caches)
    for _ in range(3):  # a few steps, each sequence advancing at its own position
        tokens = rng.integers(0, model.config.vocab_size, batch)
        batched = model.forward_batch(tokens, caches)
        for b in range(batch):
            np.testing.assert_array_equal(batched[b], model.forward([tokens[b]], alone[b])[0])
    assert [c.pos for c in caches] == [c.pos for c in alone]


@pytest.mark.parametrize("fixture", FIXTURES)
def test_compiled_batch_matches_the_readable_batched_forward(fixture, request):
    model = Model.load(request.getfixturevalue(fixture), kv_dtype="float32")  # f32 keys: no float16 rounding flips
    model.fast_lm_head_int8 = False  # every logit exact, not only the screened top ones
    rng = np.random.default_rng(9)
    caches = _prefilled(model, rng, [5, 30, 2, 60])
    readable = _clone(model, caches)
    tokens = rng.integers(0, model.config.vocab_size, 4)
    fast = model.forward_batch(tokens, caches, fast=True)
    ref = model.forward_batch(tokens, readable, fast=False)
    np.testing.assert_allclose(fast, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # and the readable batch agrees with each sequence alone through the readable path
    again = _clone(model, readable)
    for b in range(4):
        again[b].pos -= 1
    for b in range(4):
        np.testing.assert_allclose(model.forward([tokens[b]], again[b], fast=False)[0], ref[b], rtol=1e-5,
                                   atol=1e-5 * np.abs(ref).max())


def test_batch_inputs_are_checked(tiny_llama):
    model = Model.load(tiny_llama)
    cache = model.new_cache(4)
    with pytest.raises(InputError, match="its own KVCache"):
        model.forward_batch([1, 2], [cache, cache])
    with pytest.raises(InputError, match="one id per cache"):
        model.forward_batch([1, 2, 3], [cache, model.new_cache(4)])
    with pytest.raises(InputError, match="outside the vocabulary"):
        model.forward_batch([10**6], [cache])
    full = model.new_cache(1)
    model.forward([1], full)
    with pytest.raises(InputError, match="do not fit"):
        model.forward_batch([1], [full])


# --- the scheduler ---------------------------------------------------------------------------------

REQUESTS = [
    {"prompt": "Hello there", "max_tokens": 12, "temperature": 0},
    {"prompt": "Tell me a story about a long road", "max_tokens": 20, "temperature": 1.0, "seed": 5, "top_k": 40},
    {"messages": [{"role": "user", "content": "Why?"}], "max_tokens": 7, "temperature": 0.8, "seed": 11},
    {"prompt": "x " * 300, "max_tokens": 9, "temperature": 0},  # two prefill chunks
    {"prompt": "Count: one two", "max_tokens": 30, "temperature": 0.7, "seed": 1, "repetition_penalty": 1.3},
    {"prompt": "Short", "max_tokens": 1, "temperature": 0},
]


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return awqinfer.load(make_model(tmp_path_factory.mktemp("sched"), "llama", awq_group=32, max_positions=1024))


def test_concurrent_runs_equal_runs_one_at_a_time(llm, monkeypatch):
    alone = [llm.run(r) for r in REQUESTS]
    sizes = []
    real = llm.model.forward_batch
    monkeypatch.setattr(llm.model, "forward_batch", lambda t, c, fast=None, adapters=None: sizes.append(len(t)) or real(t, c, fast, adapters))
    results = [None] * len(REQUESTS)
    barrier = threading.Barrier(len(REQUESTS))

    def worker(i):
        barrier.wait()
        results[i] = llm.run(REQUESTS[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(REQUESTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == alone
    assert max(sizes) > 1  # they really were stepped together


def test_the_engine_thread_ends_when_idle_and_comes_back(llm, monkeypatch):
    """One thread runs the kernels while there is work, and ends (its OpenMP pool with it) once idle."""
    from awqinfer.engine.text import scheduler

    monkeypatch.setattr(scheduler, "IDLE_SECONDS", 0.5)  # long enough that the assert below sees it up
    names = []
    real = llm.model.forward_batch
    monkeypatch.setattr(llm.model, "forward_batch", lambda *a, **k: names.append(threading.current_thread().name)
                        or real(*a, **k))
    for _ in range(2):
        assert llm.run(REQUESTS[0]) == llm.run(REQUESTS[0])
        assert llm.scheduler.engine_running
        deadline = time.monotonic() + 10
        while llm.scheduler.engine_running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not llm.scheduler.engine_running
    assert set(names) == {"awqinfer-engine"} and threading.current_thread().name != "awqinfer-engine"


def test_the_scheduler_runs_the_same_steps_as_the_plain_loop(llm):
    for r in REQUESTS[:3]:
        request = parse_inputs(r)
        ids = llm.prompt_ids(request)
        plain = [t for t, _ in generate_tokens(llm.model, ids, request.sampling, llm.stop_ids)]
        scheduled = [t for t, _ in llm.scheduler.submit(Sequence(llm.model, ids, request.sampling, llm.stop_ids))]
        assert scheduled == plain


def wait_for(condition, seconds: float = 10) -> None:
    """Poll ``condition`` until it holds; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_queue_bound_and_a_cancelled_slot(tmp_path):
    llm = awqinfer.load(make_model(tmp_path / "m", "llama"), max_batch=1, max_queue=1)
    hold = threading.Event()  # keeps the engine inside the first request's prefill
    first = llm.run({"prompt": "a", "max_tokens": 200, "temperature": 1.0, "seed": 1, "stream": True},
                    on_prefill=lambda done, total: hold.wait(30))
    wait_for(lambda: llm.scheduler.counts == (1, 0))  # admitted, and held in its prefill
    second = llm.run({"prompt": "b", "max_tokens": 3, "temperature": 0, "stream": True})  # waits: the batch is full
    wait_for(lambda: llm.scheduler.counts == (1, 1))
    with pytest.raises(QueueFull, match="max_queue 1"):
        llm.run({"prompt": "c", "max_tokens": 3})
    first.close()  # cancelling the running one frees its slot for the waiting one
    hold.set()
    out = list(second)
    assert out[-1]["finish_reason"] in ("stop", "length")
    wait_for(lambda: llm.scheduler.counts == (0, 0))


def test_a_cancelled_request_leaves_the_queue_while_the_batch_is_still_full(tmp_path):
    """Waiting counts only requests someone still waits for: a cancel takes effect within a step."""
    llm = awqinfer.load(make_model(tmp_path / "m", "qwen2", max_positions=8192), max_batch=1)
    # greedy, this tiny Qwen2 never reaches EOS on this prompt (test_server_load): seconds of decoding left
    first = llm.run({"prompt": "Tell me a story", "max_tokens": 8000, "temperature": 0, "stream": True})
    next(first)
    second = llm.run({"prompt": "b", "max_tokens": 3, "stream": True})
    wait_for(lambda: llm.scheduler.counts == (1, 1))
    second.close()
    wait_for(lambda: llm.scheduler.counts == (1, 0))  # the first still runs: nothing freed a place
    assert list(second) == []
    first.close()
    wait_for(lambda: llm.scheduler.counts == (0, 0))


def test_a_consumer_that_stops_reading_blocks_nobody(llm):
    slow = llm.run({"prompt": "slow reader", "max_tokens": 60, "temperature": 0, "stream": True})
    next(slow)  # ...and then never reads again
    done = []
    t = threading.Thread(target=lambda: done.append(llm.run({"prompt": "fast", "max_tokens": 20})))
    t.start()
    t.join(timeout=60)
    assert done and done[0]["usage"]["completion_tokens"] >= 1
    slow.close()


def test_the_kv_budget_queues_requests_instead_of_failing(llm):
    """16 requests against a budget that holds 4 at a time: all complete, and one larger than the budget is refused."""
    need = min(len(llm.tokenizer.encode_chat([{"role": "user", "content": "q 0"}])) + 24 - 1, 1024)
    old = KV_BUDGET.limit
    KV_BUDGET.set_limit(4 * need * llm.model.kv_bytes_per_position + 1)
    try:
        peak = []
        real = llm.model.forward_batch
        results = [None] * 16

        def worker(i):
            results[i] = llm.run({"prompt": f"q {i % 10}", "max_tokens": 24, "temperature": 0})

        llm.model.forward_batch = lambda t, c, fast=None, adapters=None: peak.append(len(t)) or real(t, c, fast, adapters)
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert all(r is not None and r["finish_reason"] in ("stop", "length") for r in results)
        assert max(peak) <= 4 and KV_BUDGET.reserved == 0
        with pytest.raises(InputError, match="more than the whole KV budget"):
            llm.run({"prompt": "too long a reservation", "max_tokens": 5000})
    finally:
        del llm.model.forward_batch
        KV_BUDGET.set_limit(old)


def test_kv_memory_follows_the_tokens_not_max_tokens(llm):
    """max_tokens far beyond the context reserves the context, but allocates only what is generated."""
    seen = []
    real = llm.model.new_cache

    def spy(n, **kwargs):
        seen.append(real(n, **kwargs))
        return seen[-1]

    llm.model.new_cache = spy
    try:
        stream = llm.run({"prompt": "hi", "max_tokens": 10**9, "temperature": 0, "stream": True})
        next(stream)
        cache = seen[0]
        assert cache.capacity == 1024 and cache.allocated <= 256  # one block, not the whole context
        stream.close()
    finally:
        del llm.model.new_cache


def test_a_new_cache_never_reuses_a_freed_caches_buffers(tiny_llama_awq):
    """The compiled step keeps its cache lists between steps: a fresh cache must get its own, even when
    Python hands the new array the address (id) of a freed one."""
    model = Model.load(tiny_llama_awq)
    rng = np.random.default_rng(3)
    prompt, steps = rng.integers(0, model.config.vocab_size, 6), rng.integers(0, model.config.vocab_size, 5)
    runs = []
    for _ in range(3):
        cache = model.new_cache(32)
        model.forward(prompt, cache)
        logits = [model.forward([t], cache)[0] for t in steps]
        runs.append((np.array(logits), cache.k[:, :, : cache.pos].copy()))
        del cache  # its arrays' addresses are free for the next run's
    for logits, k in runs[1:]:
        np.testing.assert_array_equal(logits, runs[0][0])
        np.testing.assert_array_equal(k, runs[0][1])  # this run's own cache received its keys
