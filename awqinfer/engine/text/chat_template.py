"""Chat templates: the jinja2 text a checkpoint ships, compiled and rendered as Hugging Face does.

A template comes from ``chat_template.jinja`` (newer exports) or ``tokenizer_config.json``'s
``chat_template``. It is compiled in jinja2's ImmutableSandboxedEnvironment with
trim_blocks and lstrip_blocks and the globals HF templates expect (``raise_exception``,
``strftime_now``, a ``tojson`` without HTML escaping). A checkpoint without a template
gets PLAIN_CHAT_TEMPLATE.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ...errors import CheckpointError

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
    """
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8"), jinja_file
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return (template if isinstance(template, str) and template else None), directory / "tokenizer_config.json"


def _raise_exception(message):
    """The ``raise_exception`` that HF templates call to reject a conversation."""
    raise jinja2.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """HF's ``tojson``: plain json.dumps, without jinja's HTML escaping."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def compile_template(source: str, origin: Path) -> jinja2.Template:
    """Compile a chat template in the sandbox HF uses, with the globals HF templates expect."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise CheckpointError(f"{origin}: the chat template is not valid jinja ({e})") from None
