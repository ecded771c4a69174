"""The optional CUDA backend, from a CPU test run: never loaded unless asked for, clear errors
when it cannot run, and its kernels checked in child processes.

numba-cuda must not be imported by this process (a CPU run never imports it), and its
simulator must be switched on before numba is first imported: so the kernel tests
(tests/cuda_sim/) run in a child pytest with NUMBA_ENABLE_CUDASIM=1, on tiny shapes.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import awqinfer
from awqinfer.engine.model.device import get_backend
from awqinfer.errors import DeviceError, InputError

ROOT = Path(__file__).resolve().parent.parent
SIM_DIR = Path(__file__).resolve().parent / "cuda_sim"
HAS_NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None
NO_NUMBA_CUDA = "numba-cuda is not installed (pip install -e '.[cuda]'): the CUDA kernels cannot be simulated"


def child(args, simulate: bool, timeout: int):
    """Run ``python args`` from the repository root, with the simulator on or off."""
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    if simulate:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def child_pytest(modules, junit: Path, simulate: bool, timeout: int = 600) -> dict:
    """pytest on ``modules`` in a child process; returns the junit totals, failing with its output."""
    proc = child(["-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                  *[str(SIM_DIR / m) for m in modules]], simulate, timeout)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"child pytest exited {proc.returncode}:\n{tail}"
    totals = {k: 0 for k in ("tests", "failures", "errors", "skipped")}
    for suite in ET.parse(junit).getroot().iter("testsuite"):
        for k in totals:
            totals[k] += int(suite.get(k, 0))
    totals["output"] = tail
    return totals


def test_unknown_device_is_an_input_error():
    with pytest.raises(InputError, match="device must be 'cpu' or 'cuda', got 'tpu'"):
        get_backend("tpu")


def test_cuda_without_numba_cuda_names_the_package(monkeypatch, tiny_llama_awq):
    monkeypatch.setitem(sys.modules, "numba_cuda", None)  # as if not installed; nothing is imported
    with pytest.raises(DeviceError, match=r"needs the optional numba-cuda package.*pip install 'awqinfer\[cuda\]'"):
        get_backend("cuda")
    with pytest.raises(DeviceError, match="numba-cuda"):
        awqinfer.load(tiny_llama_awq, device="cuda")


def test_cpu_run_never_imports_numba_cuda(tiny_llama_awq):
    """A fresh process: import awqinfer, load a model, prefill and decode; numba.cuda stays unloaded.

    (numba-cuda, once installed, puts an import hook ``_numba_cuda_redirector`` into every
    Python process through a .pth file; that hook is not numba-cuda and is not counted.)
    """
    script = textwrap.dedent(f"""
        import json, sys
        import awqinfer
        llm = awqinfer.load({str(tiny_llama_awq)!r})
        cache = llm.model.new_cache(8)
        llm.model.forward([1, 2, 3], cache)
        llm.model.forward([4], cache, last_only=True)
        print(json.dumps(sorted(n for n in sys.modules
                                if n == "numba.cuda" or n.startswith(("numba.cuda.", "numba_cuda")))))
    """)
    proc = child(["-c", script], simulate=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"a CPU run imported {loaded[:5]}"


@pytest.mark.skipif(not HAS_NUMBA_CUDA, reason=NO_NUMBA_CUDA)
def test_cuda_without_a_gpu_names_the_driver(tiny_llama_awq):
    script = textwrap.dedent(f"""
        import awqinfer
        from awqinfer.errors import DeviceError
        try:
            awqinfer.load({str(tiny_llama_awq)!r}, device="cuda")
        except DeviceError as e:
            print("DeviceError:", e)
        else:
            print("GPU-PRESENT")
    """)
    proc = child(["-c", script], simulate=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if "GPU-PRESENT" in proc.stdout:
        pytest.skip("a usable GPU is present: the no-GPU message cannot be seen here")
    assert "DeviceError: device='cuda' needs an NVIDIA GPU and its driver, and none is usable here: " in proc.stdout


@pytest.mark.skipif(not HAS_NUMBA_CUDA, reason=NO_NUMBA_CUDA)
def test_cuda_kernels_and_forward_under_the_simulator(tmp_path):
    """Every kernel equals its CPU twin; whole forward steps equal the CPU forward (tests/cuda_sim/)."""
    totals = child_pytest(["sim_kernels.py", "sim_forward.py"], tmp_path / "sim.xml", simulate=True)
    assert totals["failures"] == totals["errors"] == totals["skipped"] == 0, totals["output"]
    assert totals["tests"] >= 30, totals["output"]


@pytest.mark.skipif(not HAS_NUMBA_CUDA, reason=NO_NUMBA_CUDA)
def test_cuda_kernels_compile_for_a_real_gpu(tmp_path):
    """Each kernel compiles to sm_90 PTX (needs NVVM, not a GPU); skipped where NVVM is absent."""
    totals = child_pytest(["ptx_compile.py"], tmp_path / "ptx.xml", simulate=False)
    if totals["skipped"] == totals["tests"]:
        reason = [line for line in totals["output"].splitlines() if "SKIPPED" in line or "skipped" in line]
        pytest.skip(f"in the child: {reason[-1] if reason else 'NVVM is not available'}")
    assert totals["failures"] == totals["errors"] == totals["skipped"] == 0, totals["output"]
    assert totals["tests"] >= 14, totals["output"]
