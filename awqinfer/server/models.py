"""The models a server holds: the ones named at start (kept), and others loaded on first use.

A request names its model as ``awqinfer.load`` does (a Workers AI name, ``smollm2-135m-instruct``
for the default, a Hugging Face repo id, a local directory). Names are resolved to a checkpoint
directory first, so two names of one checkpoint share one loaded model. Models named with
``--model`` are loaded at start (and may be downloaded then); a request never downloads: a model
that is not on this machine is an error that says how to fetch it. Of the models loaded on
demand the ``keep`` most recently used stay in memory. Loading runs in a thread, one at a time.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from pathlib import Path

from .. import LLM
from ..errors import AwqinferError, ModelNotFoundError
from ..frontend import DEFAULT_NAME, known_models, resolve_model


class ModelError(Exception):
    """A model name that cannot be served: ``not_found`` (no such model here) or not loadable."""

    def __init__(self, message: str, not_found: bool):
        super().__init__(message)
        self.not_found = not_found


class Models:
    """Model name -> loaded LLM, for one device, thread count and scheduler size.

    Each LLM batches its requests on its own scheduler: at most ``max_batch`` sequences stepped
    together, ``max_queue`` waiting (beyond it awqinfer.errors.QueueFull, an HTTP 429).
    """

    def __init__(self, device: str = "cpu", threads: int | None = None, keep: int = 2,
                 max_batch: int | None = None, max_queue: int | None = None, lora_dir: str | None = None):
        self.device = device
        self.lora_dir = lora_dir  # PEFT adapters loaded onto every model (a request's ``lora`` names one)
        self.threads = threads
        self.keep = keep
        self.max_batch, self.max_queue = max_batch, max_queue
        self._pinned: dict[tuple, LLM] = {}  # loaded at start: never evicted
        self._recent: OrderedDict[tuple, LLM] = OrderedDict()  # loaded on demand, most recent last
        self._keys: dict[str, tuple] = {}  # name -> (directory, int8)
        self._names: dict[tuple, str] = {}  # key -> the name it was first loaded under
        self._lock = asyncio.Lock()
        self._loading: dict[str, asyncio.Task] = {}  # name -> its load in progress

    def preload(self, name: str | None) -> LLM:
        """Load ``name`` now and keep it for the server's lifetime (downloading it if needed)."""
        key = self._key(name, offline=None)
        if key not in self._pinned:
            self._pinned[key] = self._recent.pop(key, None) or self._load(name, key)
        return self._pinned[key]

    async def get(self, name: str) -> LLM:
        """The loaded model for ``name``, loading it (from this machine only) if needed; raises ModelError.

        A load goes on when the request that started it is abandoned (its client left): the
        next request for the model finds it loaded, or waits for the same load.
        """
        llm = self._lookup(self._keys.get(name))
        if llm is not None:
            return llm
        task = self._loading.get(name)
        if task is None:
            task = self._loading[name] = asyncio.ensure_future(self._load_on_demand(name))
            task.add_done_callback(lambda done: self._loaded(name, done))
        return await asyncio.shield(task)

    async def _load_on_demand(self, name: str) -> LLM:
        async with self._lock:  # one load at a time: memory for one more model, not several
            key = self._keys.get(name) or await asyncio.to_thread(self._key, name, True)
            llm = self._lookup(key)
            if llm is None:
                llm = await asyncio.to_thread(self._load, name, key)
                self._recent[key] = llm
                while len(self._recent) > self.keep:
                    evicted, _ = self._recent.popitem(last=False)
                    self._names.pop(evicted, None)
            return llm

    def _loaded(self, name: str, task: asyncio.Task) -> None:
        self._loading.pop(name, None)
        if not task.cancelled():
            task.exception()  # retrieved here, so an error nobody waited for is not reported as lost

    def loaded(self) -> list[tuple[str, LLM]]:
        """(name, LLM) of every model in memory, those named at start first."""
        return [(self._names[k], llm) for k, llm in [*self._pinned.items(), *self._recent.items()]]

    def llms(self) -> list[LLM]:
        return [llm for _, llm in self.loaded()]

    def adapter(self, name: str) -> tuple[str, str] | None:
        """(the first model loaded at start, ``name``) when ``name`` is one of its LoRA adapters, else None:
        how an OpenAI client picks an adapter, as its ``model`` (as vLLM serves them)."""
        if not self._pinned:
            return None
        key, llm = next(iter(self._pinned.items()))
        return (self._names[key], name) if name in llm.adapters else None

    def available(self) -> list[str]:
        """Names a request can use without a download: the loaded models, their LoRA adapters (as OpenAI's
        ``model``), then the known names on this machine."""
        names = [name for name, _ in self.loaded()]
        if self._pinned:
            names += [a for a in next(iter(self._pinned.values())).adapters if a not in names]
        for row in known_models():
            if row["cached"] and row["name"] not in names and not (row["default"] and DEFAULT_NAME in names):
                names.append(row["name"])
        return names

    def _lookup(self, key: tuple | None) -> LLM | None:
        if key is None:
            return None
        if key in self._pinned:
            return self._pinned[key]
        if key in self._recent:
            self._recent.move_to_end(key)
            return self._recent[key]
        return None

    def _key(self, name: str | None, offline: bool | None) -> tuple:
        """``name`` -> (real checkpoint directory, int8), from this machine only when ``offline``."""
        if name is not None and not str(name).strip():
            raise ModelError("model: got an empty name; allowed: a model name (see GET /v1/models)", True)
        try:
            directory, int8 = resolve_model(name, offline=offline)
        except ModelNotFoundError as e:
            hint = ("; a server loads only models already on this machine: fetch it first, or start the "
                    f"server with --model {name}, which downloads it") if offline and "hf download" in str(e) else ""
            raise ModelError(f"{e}{hint}", True) from None
        except (AwqinferError, OSError) as e:
            raise ModelError(f"model {name!r}: {e}", False) from None
        except ValueError as e:  # a name no path or repo id can have (a NUL byte, a malformed repo id)
            raise ModelError(f"model {name!r}: not a usable name ({e})", True) from None
        key = (os.path.realpath(directory), int8)
        self._keys[DEFAULT_NAME if name is None else str(name)] = key
        return key

    def _load(self, name: str | None, key: tuple) -> LLM:
        label = DEFAULT_NAME if name is None else str(name)
        try:
            llm = LLM.from_directory(Path(key[0]), label, self.device, key[1], self.threads,
                                     max_batch=self.max_batch, max_queue=self.max_queue, lora_dir=self.lora_dir)
        except (AwqinferError, OSError) as e:
            raise ModelError(f"model {label!r} cannot be loaded: {e}", False) from None
        self._names[key] = label
        return llm
