"""Numba kernels: plain functions over numpy arrays, knowing nothing of the engine.

Every kernel writes into an ``out`` array the caller allocated and trusts the
shapes in its docstring: the engine validates shapes, dtypes and indices before
calling, because Numba does not check bounds.
"""

import hashlib
from pathlib import Path


def drop_stale_cache(directory: Path) -> bool:
    """Delete Numba's cached machine code in ``directory/__pycache__`` if any kernel source changed.

    Numba's ``cache=True`` keys each function on its own file only, but a compiled
    function carries the code of the kernels it calls from other files (decode.py's
    ``decode_batch`` calls awq.py, norm.py, ...). After such a file changes (a git pull,
    an edit), the stale mix could be loaded and crash. A fingerprint of all sources,
    kept beside the cache, catches that. Returns True when the cache was dropped.
    """
    cache = directory / "__pycache__"
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(directory.glob("*.py")))).hexdigest()
    stamp = cache / "kernels-source.sha256"
    if stamp.is_file() and stamp.read_text() == digest:
        return False
    try:
        for f in cache.glob("*.nb[ic]"):
            f.unlink(missing_ok=True)
        cache.mkdir(exist_ok=True)
        stamp.write_text(digest)
    except OSError:  # a read-only install: Numba then caches elsewhere, per file as usual
        return False
    return True


drop_stale_cache(Path(__file__).parent)
