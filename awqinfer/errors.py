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


class TemplateError(AwqinferError, ValueError):
    """A chat template failed to render: names the template's file and what it did.

    Never raised itself: one of its two kinds says whose fault it was.
    """


class TemplateInputError(TemplateError, InputError):
    """The template refused this conversation (its ``raise_exception``, a turn it cannot take)
    or the conversation is too long for the model: the request's fault, an HTTP 400."""


class TemplateCheckpointError(TemplateError, CheckpointError):
    """The template is broken or hostile in itself (bad syntax, a sandbox escape, a limit of
    size, time, loops or recursion exceeded): the checkpoint's fault."""


class ModelNotFoundError(AwqinferError, LookupError):
    """A model name could not be resolved to files on this machine."""


class DeviceError(AwqinferError, RuntimeError):
    """The requested device cannot be used here: names what is missing (package, driver, GPU, compiler)."""


class Cancelled(AwqinferError):
    """A generation was cancelled (its ``cancel`` event set) before it finished."""


class QueueFull(AwqinferError):
    """The engine's queue of waiting requests is full (a server answers 429): try again later."""
