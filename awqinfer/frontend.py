"""What front ends use besides ``load`` and ``LLM``: the input schema, its checks, and model names.

The server (and any other front end) imports these from here, not from the engine's
modules, so the engine can be rearranged without touching them:

    SAMPLING_FIELDS, FIELDS      the schema's numeric fields (name, range, default, help), by name
    check_inputs(inputs)         the schema's checks alone (an InputError names the field); a Request
    check_number, describe_value one field's range check, a value as an error message quotes it
    join_chunks(chunks)          a stream's chunks -> the non-streamed result, as ``LLM.run`` joins them
    json_mode(inputs)            whether that result's response is parsed JSON (response_format)
    DEFAULT_NAME                 the default model's name (smollm2-135m-instruct)
    resolve_model(name, offline) a model name -> (checkpoint directory, int8); offline=True never downloads
    known_models()               the known names, and which are on this machine
"""

from __future__ import annotations

from .engine.hub import DEFAULT_NAME, known_models
from .engine.hub import resolve as resolve_model
from .engine.llm import join_chunks, json_mode
from .engine.text.inputs import parse_inputs as check_inputs
from .engine.text.schema import FIELDS, SAMPLING_FIELDS, check_number, describe_value

__all__ = ["SAMPLING_FIELDS", "FIELDS", "check_inputs", "check_number", "describe_value", "join_chunks",
           "json_mode",
           "DEFAULT_NAME", "resolve_model", "known_models"]
