"""Safetensors checkpoints, single-file or sharded: read memory-mapped and checked, and written.

The safetensors format is an 8-byte little-endian header length, a JSON header
mapping each tensor name to ``{dtype, shape, data_offsets}``, then the raw
bytes. We parse the header ourselves so that every tensor becomes a zero-copy
``numpy.memmap`` view: a 4 GB model costs no RAM until its pages are read, and
``release`` hands pages back once a tensor has been converted.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from ...errors import CheckpointError

SHARD_BYTES = 2 * 1024**3  # writing: start a new safetensors shard past 2 GiB

# safetensors dtype -> numpy dtype. bfloat16 has no numpy type: it is exposed as
# its raw uint16 bits and widened by ``to_float32``.
DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype (safetensors name), shape, byte range."""

    name: str
    path: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


class Checkpoint:
    """All tensors of a checkpoint directory, by name, memory-mapped on demand."""

    def __init__(self, directory: str | Path, file: str = "model.safetensors"):
        """``file``: the single file (or, with ``.index.json`` added, the shard index) to read."""
        self.directory = Path(directory)
        index = self.directory / f"{file}.index.json"
        single = self.directory / file
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a valid safetensors index ({e!r})") from None
            files = sorted(set(weight_map.values()))
        elif single.is_file():
            weight_map, files = None, [file]
        else:
            raise CheckpointError(
                f"{self.directory}: no {file} or {file}.index.json (only safetensors checkpoints are read)"
            )
        self.tensors: dict[str, TensorInfo] = {}
        for name in files:
            path = self.directory / name
            if not path.is_file():
                raise CheckpointError(f"{index}: shard {name!r} is listed but missing")
            for info in _read_header(path):
                if info.name in self.tensors:
                    raise CheckpointError(f"{path}: tensor {info.name!r} appears in two shards")
                self.tensors[info.name] = info
        if weight_map is not None:
            for tensor, shard in weight_map.items():
                info = self.tensors.get(tensor)
                if info is None or info.path.name != shard:
                    raise CheckpointError(f"{index}: tensor {tensor!r} is not in its listed shard {shard!r}")
        self._maps: dict[Path, np.memmap] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def info(self, name: str) -> TensorInfo:
        """The header entry of ``name``; a missing tensor is a CheckpointError naming it."""
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.directory}: tensor {name!r} is missing from the checkpoint") from None

    def get(self, name: str) -> np.ndarray:
        """A read-only memory-mapped view of ``name`` in its stored dtype (bf16 as uint16)."""
        info = self.info(name)
        mm = self._maps.get(info.path)
        if mm is None:
            mm = self._maps[info.path] = np.memmap(info.path, dtype=np.uint8, mode="r")
        return mm[info.start : info.end].view(DTYPES[info.dtype]).reshape(info.shape)

    def to_float32(self, name: str) -> np.ndarray:
        """``name`` converted to a new float32 array (fp32, fp16 or bf16 source)."""
        info = self.info(name)
        raw = self.get(name)
        if info.dtype in ("BF16", "F32", "F16", "F64"):
            return widen(raw, bf16=info.dtype == "BF16")
        raise CheckpointError(f"{info.path}: tensor {name!r} has dtype {info.dtype}, expected a float type")

    def release(self, name: str) -> None:
        """Drop the pages of ``name`` from this process (they stay in the OS page cache)."""
        info = self.info(name)
        mm = self._maps.get(info.path)
        if mm is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        start = (info.start // page) * page
        try:
            mm._mmap.madvise(mmap.MADV_DONTNEED, start, info.end - start)
        except (AttributeError, OSError, ValueError):
            pass  # an optimisation only; correctness does not depend on it


def widen(raw: np.ndarray, bf16: bool = False) -> np.ndarray:
    """A float array (bf16 given as its uint16 bits) -> a new float32 array.

    bfloat16 is the top half of a float32, so shifting its bits up 16 places is exact.
    """
    if bf16:
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


def _read_header(path: Path) -> list[TensorInfo]:
    """Parse and check one safetensors header: sizes, dtypes, offsets within the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file (no header)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise CheckpointError(f"{path}: truncated or corrupt safetensors file (header of {n} bytes)")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_start, data_size = 8 + n, size - 8 - n
    infos = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if dtype not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
        if any(not isinstance(s, int) or s < 0 for s in shape):
            raise CheckpointError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(DTYPES[dtype]).itemsize
        if not (0 <= begin <= end) or end - begin != nbytes:
            raise CheckpointError(f"{path}: tensor {name!r}: byte range {begin}..{end} does not fit shape {shape}")
        if end > data_size:
            raise CheckpointError(
                f"{path}: truncated file: tensor {name!r} ends at byte {end} but the file holds {data_size}"
            )
        infos.append(TensorInfo(name, path, dtype, shape, data_start + begin, data_start + end))
    return infos


class ShardWriter:
    """Safetensors files written as tensors arrive, a new shard past SHARD_BYTES, named as transformers names them.

    One shard: ``model.safetensors``. More: ``model-0000i-of-0000n.safetensors`` plus
    ``model.safetensors.index.json`` (the count n is known only at the end, so shards are renamed then).
    """

    def __init__(self, directory: Path):
        self.directory, self.shard_bytes = directory, SHARD_BYTES
        self.pending: dict[str, np.ndarray] = {}
        self.pending_bytes = 0
        self.shards: list[list[str]] = []  # tensor names of each written shard
        self.total_bytes = 0

    def add(self, name: str, tensor: np.ndarray) -> None:
        if self.pending and self.pending_bytes + tensor.nbytes > self.shard_bytes:
            self._flush()
        self.pending[name] = np.ascontiguousarray(tensor)
        self.pending_bytes += tensor.nbytes

    def _flush(self) -> None:
        save_file(self.pending, str(self._tmp(len(self.shards))), metadata={"format": "pt"})
        self.shards.append(list(self.pending))
        self.total_bytes += self.pending_bytes
        self.pending, self.pending_bytes = {}, 0

    def _tmp(self, i: int) -> Path:
        return self.directory / f"shard-{i:05d}.safetensors.partial"

    def close(self) -> None:
        self._flush()
        n = len(self.shards)
        for stale in [*self.directory.glob("model*.safetensors"), self.directory / "model.safetensors.index.json"]:
            stale.unlink(missing_ok=True)  # from an earlier run into the same directory
        if n == 1:
            self._tmp(0).replace(self.directory / "model.safetensors")
            return
        weight_map = {}
        for i, names in enumerate(self.shards):
            fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            self._tmp(i).replace(self.directory / fname)
            weight_map.update(dict.fromkeys(names, fname))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
