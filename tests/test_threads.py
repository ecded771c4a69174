"""The thread knob: load(threads=N) sets how many threads the kernels use, checked, with a sensible default."""

import os
import threading

import numba
import pytest

import awqinfer
from awqinfer.engine.model.threads import available_cores, resolve_threads


def test_default_is_the_cores_this_process_may_use():
    assert available_cores() == len(os.sched_getaffinity(0))
    assert resolve_threads(None) == min(len(os.sched_getaffinity(0)), numba.config.NUMBA_NUM_THREADS)


@pytest.mark.parametrize("bad", [0, -1, 10_000, 1.5, True, "2"])
def test_bad_thread_counts_are_refused_before_loading(bad, tmp_path):
    with pytest.raises(awqinfer.InputError, match="threads: got"):
        awqinfer.load(tmp_path / "never-read", threads=bad)  # the directory is not even looked at


def test_the_model_runs_with_its_own_thread_count_in_any_thread(tiny_llama_awq):
    one = awqinfer.load(tiny_llama_awq, threads=1)
    assert one.model.threads == 1
    seen = []
    real_forward = one.model.forward

    def forward(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        seen.append(numba.get_num_threads())
        return out

    one.model.forward = forward
    inputs = {"prompt": "Hello", "max_tokens": 5, "temperature": 0}
    worker = threading.Thread(target=lambda: seen.append(one.run(inputs)))  # a fresh thread: numba's default there
    worker.start()
    worker.join()
    result = seen.pop()
    assert seen and set(seen) == {1}
    both = awqinfer.load(tiny_llama_awq, threads=numba.config.NUMBA_NUM_THREADS)
    assert both.run(inputs) == result  # the thread count changes speed, never the output


def test_cli_threads_flag(tiny_qwen2):
    import subprocess
    import sys

    base = [sys.executable, "-m", "awqinfer", "run", "--model", str(tiny_qwen2), "--max-tokens", "4",
            "--temperature", "0", "--json"]
    one = subprocess.run(base + ["--threads", "1", "Hello"], capture_output=True, text=True, timeout=300)
    default = subprocess.run(base + ["Hello"], capture_output=True, text=True, timeout=300)
    assert one.returncode == default.returncode == 0, one.stderr + default.stderr
    assert one.stdout == default.stdout
    too_many = subprocess.run(base + ["--threads", "999", "Hello"], capture_output=True, text=True, timeout=300)
    assert too_many.returncode == 2 and "threads: got 999" in too_many.stderr
    assert "Traceback" not in too_many.stderr


def test_thread_chooser_keeps_the_fastest_count_and_follows_the_load():
    """Timed rounds pick the faster candidate; rounds grow sparse while they agree; a change of load
    (steps suddenly twice as slow) starts a round at once, and a later round revises the choice."""
    from awqinfer.engine.model.threads import ThreadChooser

    chooser = ThreadChooser(2)
    assert chooser.candidates == [2, 1] and chooser.best == 2
    step_time = {2: 0.004, 1: 0.007}  # a quiet machine: 2 threads faster

    def run(steps, batch=1):
        used = []
        for _ in range(steps):
            n = chooser.next(batch)
            used.append(n)
            chooser.record(n, step_time[n] * batch)
        return used

    first = run(ThreadChooser.EXPLORE_EVERY)
    assert sorted(first[:6]) == [1, 1, 1, 2, 2, 2] and set(first[6:]) == {2}
    assert chooser.every == 2 * ThreadChooser.EXPLORE_EVERY  # re-elected by a clear margin
    quiet = run(2000)
    assert quiet.count(1) <= 3 * 5 and chooser.every == ThreadChooser.EXPLORE_MOST  # rounds at +128, +256, +512...

    step_time = {2: 0.020, 1: 0.009}  # another process took a core: 1 thread faster
    busy = run(12)
    assert busy[:3] == [2, 2, 2] and sorted(busy[3:9]) == [1, 1, 1, 2, 2, 2] and set(busy[9:]) == {1}
    assert chooser.best == 1 and chooser.every == ThreadChooser.EXPLORE_EVERY  # a new winner: rounds close again

    step_time = {2: 0.004, 1: 0.007}  # the other process ended: 1-thread steps got faster, no surprise
    calm = run(ThreadChooser.EXPLORE_EVERY + 6)
    assert chooser.best == 2 and calm[-1] == 2

    run(2000)  # rounds sparse again, measured on single sequences
    batched = run(ThreadChooser.EXPLORE_EVERY + 6, batch=8)
    assert batched.count(1) == 3  # another batch size: its own round within EXPLORE_EVERY steps
    assert ThreadChooser(1).candidates == [1] and ThreadChooser(8).candidates == [8, 4, 1]


def test_default_model_threads_are_chosen_but_an_explicit_count_is_kept(tiny_llama_awq):
    auto = awqinfer.load(tiny_llama_awq).model
    fixed = awqinfer.load(tiny_llama_awq, threads=1).model
    assert auto.thread_chooser is not None and auto.thread_chooser.candidates[0] == auto.threads
    assert fixed.thread_chooser is None
    cache = auto.new_cache(16)
    auto.forward([1, 2, 3], cache)
    for t in range(8):
        auto.forward([t], cache)
    assert auto.thread_chooser.best in auto.thread_chooser.candidates


def test_use_threads_sets_each_threads_count_and_skips_an_unchanged_one(monkeypatch):
    from awqinfer.engine.model import threads

    pool = numba.config.NUMBA_NUM_THREADS
    if pool < 2:
        pytest.skip("a pool of one thread has no other count to set")
    threads.use_threads(pool)
    calls = []
    real = numba.set_num_threads
    monkeypatch.setattr(threads.numba, "set_num_threads", lambda n: (calls.append(n), real(n)))
    threads.use_threads(pool)
    assert calls == []  # unchanged: no call into Numba (and no GIL released)
    threads.use_threads(1)
    assert calls == [1] and numba.get_num_threads() == 1
    seen = []

    def other():
        threads.use_threads(1)  # another thread: its own count, set there
        seen.append(numba.get_num_threads())
    worker = threading.Thread(target=other)
    worker.start()
    worker.join()
    assert seen == [1] and calls == [1, 1]
    threads.use_threads(pool)
    assert numba.get_num_threads() == pool
