"""Shared by the simulator modules: refuse to run without a device, speed the simulator up.

These modules are run by tests/test_cuda.py in a child process with
NUMBA_ENABLE_CUDASIM=1 (set before numba is imported). Run directly on a machine
with a GPU and without that variable, they test the real device instead.
"""

import os
import sys

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1" and "numba.cuda" not in sys.modules:
    pytest.importorskip("numba_cuda", reason="numba-cuda is not installed: pip install -e '.[cuda]'")

from numba import cuda  # noqa: E402

if not cuda.is_available():
    pytest.skip("no CUDA device, and NUMBA_ENABLE_CUDASIM=1 is not set", allow_module_level=True)

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
if SIMULATED:
    # The simulator runs each CUDA thread as a Python thread and its block manager polls
    # them for barriers; a shorter GIL switch interval cuts the wait at each barrier.
    sys.setswitchinterval(5e-4)
