"""Chat templates: the jinja2 text a checkpoint ships, compiled and rendered as Hugging Face does, under limits.

A template comes from ``chat_template.jinja`` (newer exports) or ``tokenizer_config.json``'s
``chat_template``. It is compiled in a jinja2 immutable sandbox with HF's settings
(trim_blocks, lstrip_blocks, loop controls) and the globals HF templates expect
(``raise_exception``, ``strftime_now``, a ``tojson`` without HTML escaping). A checkpoint
without a template gets PLAIN_CHAT_TEMPLATE.

A template is the checkpoint author's code rendering a request's data, so it renders under
limits of size, time, loops and recursion (template_limits.py, enforced inside the sandbox
by sandbox.py). Every failure is an awqinfer.TemplateError naming the template's file, the
line and what it did: a TemplateInputError when the conversation is at fault (the template's
``raise_exception``, a turn it cannot take, a conversation longer than the context can hold),
a TemplateCheckpointError when the template is (bad syntax, a sandbox escape, a limit passed).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import jinja2
from jinja2.sandbox import SecurityError

from ...errors import TemplateCheckpointError, TemplateInputError
from .sandbox import LimitedSandbox
from .template_limits import Budget, LimitExceeded, RenderLimits, TooBig, budget, limited, text_size

# Real templates are a few KB, tool-calling ones up to about 20 KB; compiling 64 KiB of jinja takes
# about a second and 130 MB (a MB would take 20 s and 2 GB), so nothing longer is compiled.
MAX_TEMPLATE_CHARS = 1 << 16
PLAIN_ORIGIN = "awqinfer's plain chat template (the checkpoint has none)"

# The fallback for checkpoints that ship no chat template: one "role: content" line per
# message after the BOS, then "assistant:" for the model to continue. Plain text, so a
# base model reads it as a dialogue transcript.
PLAIN_CHAT_TEMPLATE = (
    "{% if bos_token is defined %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)


def template_source(directory: Path, config: dict) -> tuple[str | None, Path]:
    """The template text and its file: chat_template.jinja if present (newer HF exports), else tokenizer_config's.

    tokenizer_config may hold a list of named templates; the one named 'default' is used.
    A template over MAX_TEMPLATE_CHARS is refused before it is read.
    """
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        if jinja_file.stat().st_size > 4 * MAX_TEMPLATE_CHARS:  # 4 bytes per character at most in UTF-8
            raise TemplateCheckpointError(f"{jinja_file}: the chat template is over {MAX_TEMPLATE_CHARS:,} characters")
        return jinja_file.read_text(encoding="utf-8"), jinja_file
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return (template if isinstance(template, str) and template else None), directory / "tokenizer_config.json"


class _Rejected(Exception):
    """What the template's ``raise_exception`` raises: the template refuses this conversation."""


def _raise_exception(message):
    """The ``raise_exception`` that HF templates call to reject a conversation."""
    raise _Rejected(message)


def _strftime_now(fmt: str) -> str:
    """HF's ``strftime_now``: the local time in ``fmt`` (an escape like %c writes up to ~12 characters per 2)."""
    budget().expect(16 * len(str(fmt)), "strftime_now()")
    return datetime.now().strftime(fmt)


def _brief(error: BaseException, limit: int = 500) -> str:
    """An exception's message for ours, cut short: a template may raise with megabytes of text."""
    text = str(error)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


class ChatTemplate:
    """A chat template compiled once in the limited sandbox, rendered under ``limits``."""

    def __init__(self, source: str | None, origin: Path | None, limits: RenderLimits = RenderLimits()):
        self.origin = str(origin) if source is not None else PLAIN_ORIGIN
        self.limits = limits
        source = PLAIN_CHAT_TEMPLATE if source is None else source
        if len(source) > MAX_TEMPLATE_CHARS:
            raise TemplateCheckpointError(f"{self.origin}: the chat template is over {MAX_TEMPLATE_CHARS:,} characters")
        env = LimitedSandbox(globals={"raise_exception": _raise_exception, "strftime_now": _strftime_now})
        try:
            self._template = env.compile_limited(source, self.origin)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateCheckpointError(f"{self.origin}: the chat template is not valid jinja "
                                          f"(line {e.lineno}: {e.message})") from None
        except (RecursionError, MemoryError, SyntaxError, ValueError) as e:  # nested too deeply to compile
            raise TemplateCheckpointError(f"{self.origin}: the chat template cannot be compiled "
                                          f"({type(e).__name__}: {e})") from None

    def render(self, **variables) -> str:
        """The template rendered with ``variables`` (messages, tools, documents, add_generation_prompt, ...).

        Raises TemplateInputError naming the variable when the inputs alone are longer than the
        model's context can hold, or when the template refuses them; TemplateCheckpointError when
        the template breaks a limit or the sandbox.
        """
        memo, size = {}, 0
        for name, value in variables.items():
            try:
                size += text_size(value, self.limits.max_chars - size, memo, record=True)
            except TooBig:
                raise TemplateInputError(
                    f"{name}: longer than the model's context can hold: the inputs pass {self.limits.max_chars:,} "
                    f"characters ({self.limits.why})") from None
        try:
            with limited(Budget(self.limits, size, memo)):
                return self._template.render(**variables)
        except _Rejected as e:
            raise TemplateInputError(f"messages: the chat template ({self.origin}) rejects this conversation: "
                                     f"{_brief(e)}") from None
        except LimitExceeded as e:
            raise TemplateCheckpointError(f"{self.origin}: the chat template{self._line(e)} {e}") from None
        except SecurityError as e:
            raise TemplateCheckpointError(f"{self.origin}: the chat template tries to leave its sandbox"
                                          f"{self._line(e)}: {_brief(e)}") from None
        except RecursionError as e:
            raise TemplateCheckpointError(f"{self.origin}: the chat template recurses too deeply{self._line(e)}") \
                from None
        except (jinja2.TemplateError, TypeError, ValueError, LookupError, ArithmeticError) as e:
            raise TemplateInputError(f"messages: the chat template ({self.origin}) fails on this conversation"
                                     f"{self._line(e)}: {type(e).__name__}: {_brief(e)}") from None
        except Exception as e:  # MemoryError included: never a raw exception from a checkpoint's code
            raise TemplateCheckpointError(f"{self.origin}: the chat template fails{self._line(e)}: "
                                          f"{type(e).__name__}: {_brief(e)}") from None

    def _line(self, error: BaseException) -> str:
        """' (line N)' of the template, from the frames jinja2 puts in the traceback, or ''."""
        line, tb = None, error.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == self.origin:
                line = tb.tb_lineno
            tb = tb.tb_next
        return "" if line is None else f" (line {line})"
