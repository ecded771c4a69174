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


def test_every_compiled_kernel_releases_the_gil():
    """A server runs generations in worker threads: a kernel holding the GIL would stall its event loop."""
    import importlib
    import pkgutil

    import awqinfer.kernels
    from numba.core.registry import CPUDispatcher

    seen, holding = [], []
    for info in pkgutil.iter_modules(awqinfer.kernels.__path__):
        module = importlib.import_module(f"awqinfer.kernels.{info.name}")
        for name, obj in vars(module).items():
            if isinstance(obj, CPUDispatcher) and obj.__module__ == module.__name__ \
                    and obj.targetoptions.get("inline") != "always":  # inlined helpers compile into callers
                seen.append(name)
                if not obj.targetoptions.get("nogil"):
                    holding.append(f"{module.__name__}.{name}")
    assert len(seen) >= 15, seen
    assert not holding, f"compiled without nogil=True: {holding}"
