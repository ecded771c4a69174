"""The seed schema's numeric fields, written once: bounds, defaults, descriptions, and their checks.

``inputs.py`` validates requests with these, ``sampling.py`` builds SamplingParams from
them, and the CLI (cli/common.py) generates its flags, ranges and help texts from them,
so a bound or a default lives in exactly one place. Ranges and descriptions are the
Workers AI model pages' (``max_tokens`` has no upper bound there; the model's context
caps it at run time).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from ...errors import InputError

MAX_CHARS = 131072  # prompt and message content length


@dataclass(frozen=True)
class NumberField:
    """One numeric field of the schema."""

    name: str
    low: float
    high: float | None  # None: no upper bound
    integer: bool
    default: float | int | None  # None: the field is off unless given
    help: str

    def check(self, value):
        """``value`` as this field's type if it is in range, else an InputError naming field, value and range."""
        return check_number(self.name, value, self.low, self.high, self.integer)

    @property
    def allowed(self) -> str:
        """The range in words, as error messages and help texts show it."""
        return describe_range(self.low, self.high, self.integer)


SAMPLING_FIELDS = (
    NumberField("max_tokens", 1, None, True, 256, "the most tokens to generate"),
    NumberField("temperature", 0, 5, False, 0.6, "randomness of sampling; 0 is greedy"),
    NumberField("top_p", 0, 2, False, None, "keep the most likely tokens whose probability reaches top_p (>= 1: all)"),
    NumberField("top_k", 1, 50, True, None, "keep only the k most likely tokens"),
    NumberField("seed", 1, 9_999_999_999, True, None, "random seed, for reproducible sampling"),
    NumberField("repetition_penalty", 0, 2, False, None,
                "penalty for tokens already seen (prompt and output); 1 or 0 is off"),
    NumberField("frequency_penalty", 0, 2, False, None, "penalty growing with how often a token was generated"),
    NumberField("presence_penalty", 0, 2, False, None, "penalty for any token already generated"),
)
FIELDS = {f.name: f for f in SAMPLING_FIELDS}


def check_number(field: str, value, low: float, high: float | None, integer: bool):
    """Return ``value`` if it is a finite number (an integer when ``integer``) in low..high, else raise.

    JSON has one number type, so an integer field accepts 3.0 (returned as 3), as JSON
    Schema does; a bool is never a number. The InputError names field, value and range.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        ok = False
    elif isinstance(value, numbers.Integral):
        ok = True  # exact, however large (math.isfinite would overflow on 10**400)
    else:
        ok = math.isfinite(value) and (not integer or float(value).is_integer())
    if not ok or value < low or (high is not None and value > high):
        raise InputError(f"{field}: got {describe_value(value)}; allowed: {describe_range(low, high, integer)}")
    return int(value) if integer else float(value)


def describe_range(low: float, high: float | None, integer: bool) -> str:
    """'an integer in 1..50', 'a number >= 0': a range in words."""
    kind = "an integer" if integer else "a number"
    return f"{kind} in {low}..{high}" if high is not None else f"{kind} >= {low}"


def describe_value(value) -> str:
    """A short description of a bad value for an error message: its repr (cut) and type."""
    if isinstance(value, int) and value.bit_length() > 4000:  # repr() refuses ints this long
        return f"an integer of {value.bit_length()} bits (int)"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"
