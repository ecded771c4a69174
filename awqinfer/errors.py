"""The errors a user of awqinfer catches.

Every error the engine raises on purpose is an ``AwqinferError``; each also
derives from the builtin that fits it, so ``except ValueError`` keeps working.
"""


class AwqinferError(Exception):
    """Base class of every error awqinfer raises on purpose."""


class InputError(AwqinferError, ValueError):
    """The inputs of ``run`` break the schema: names the field, value and allowed range."""


class CheckpointError(AwqinferError, ValueError):
    """A checkpoint is malformed or unsupported: names the file and the tensor or key."""


class ModelNotFoundError(AwqinferError, LookupError):
    """A model name could not be resolved to files on this machine."""


class DeviceError(AwqinferError, RuntimeError):
    """The requested device cannot be used here: names what is missing (package, driver, GPU, compiler)."""


class Cancelled(AwqinferError):
    """A generation was cancelled (its ``cancel`` event set) before it finished."""


class QueueFull(AwqinferError):
    """The engine's queue of waiting requests is full (a server answers 429): try again later."""
