"""Upper bounds on what a template operation will build, computed before it runs (sandbox.py uses them).

Each bound is cheap (a count, a regex over a format string) and never below the real size,
so a refusal is never a false alarm about anything but the bound itself. They cover the
operations whose result can be far larger than what they read:

    str % args, str.format         the format's widths and precisions, and each field's value
    str methods                    center/ljust/rjust/zfill (width), expandtabs, replace, translate,
                                   join (materialized first), case changes (x3), encode/decode (x10)
    int.to_bytes                   its length
    filters                        center, indent, wordwrap, truncate, replace, format, join, sum,
                                   urlize, urlencode, escape, xmlattr, pprint, case changes, batch, slice,
                                   round (its precision is a power of ten)
"""

from __future__ import annotations

import re
from string import Formatter

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")
_DIGITS = re.compile(r"\d+")
_CASE_CHANGES = ("upper", "lower", "title", "capitalize", "swapcase", "casefold")  # 'ß'.upper() == 'SS': x3 at most


def _int(value) -> int:
    """A width or count argument; anything but an int counts 0 (Python itself refuses it next)."""
    return value if isinstance(value, int) else 0


def percent_size(fmt: str | bytes, args, measure) -> int:
    """An upper bound on len(fmt % args): the format's text, its widths and precisions, and the values.

    A tuple's values are used once each; a mapping or single value may be used by every field.
    """
    text = fmt.decode("latin-1") if isinstance(fmt, bytes) else fmt
    specs = _PERCENT_SPEC.findall(text)  # [(width, precision)]
    numbers = sum(int(x) for spec in specs for x in spec if x.isdigit())
    values = args if isinstance(args, tuple) else (args,)
    if any("*" in spec for spec in specs):  # widths taken from the values
        numbers += sum(abs(v) for v in values if isinstance(v, int))
    size = measure(args)
    return len(text) + numbers + (size if isinstance(args, tuple) else size * max(1, len(specs)))


def format_size(fmt: str, values: list, measure) -> int:
    """An upper bound on len(fmt.format(...)): every field may print the largest value at its width.

    A width given by a nested field (``{:{w}}``) counts as the largest integer among the values.
    """
    specs = [spec or "" for _, name, spec, _ in Formatter().parse(fmt) if name is not None]
    biggest = max(map(measure, values), default=0)
    widest = max((abs(v) for v in values if isinstance(v, int)), default=0)
    widths = sum(widest if "{" in spec else sum(map(int, _DIGITS.findall(spec))) for spec in specs)
    return len(fmt) + len(specs) * biggest + widths


def replace_size(s, old, new, count=-1) -> int | None:
    """An upper bound on len(s.replace(old, new, count)); None when the types do not fit (replace refuses them)."""
    if not (isinstance(s, (str, bytes)) and type(old) is type(new) is type(s)):
        return None
    hits = len(s) + 1 if not old else s.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * max(0, len(new) - len(old))


def _method_size(name: str, s, args: tuple, kwargs: dict) -> int | None:
    """An upper bound on what the str/bytes method ``name`` of ``s`` returns (None: no larger than s)."""
    n = len(s)

    def arg(i, key, default):
        return args[i] if len(args) > i else kwargs.get(key, default)

    if name in ("center", "ljust", "rjust", "zfill"):
        return max(n, _int(arg(0, "width", 0)))
    if name == "expandtabs":
        return n + s.count(b"\t" if isinstance(s, bytes) else "\t") * max(0, _int(arg(0, "tabsize", 8)))
    if name == "replace":
        return replace_size(s, arg(0, "old", None), arg(1, "new", None), arg(2, "count", -1))
    if name == "translate":
        table = arg(0, "table", None)
        mapped = table.values() if isinstance(table, dict) else ()
        return n * max([1] + [len(v) for v in mapped if isinstance(v, (str, bytes))])
    if name in _CASE_CHANGES:
        return 3 * n
    if name in ("encode", "decode"):  # an escaping error handler writes up to 10 characters per character
        return 10 * n
    return None


def call_size(obj, args: tuple, kwargs: dict) -> tuple[tuple, int | None]:
    """The arguments to call ``obj`` with, and an upper bound on its result's size (None: not an amplifier).

    ``join``'s iterable is materialized (it may be a generator) so its items can be counted.
    """
    owner, name = getattr(obj, "__self__", None), getattr(obj, "__name__", "")
    if isinstance(owner, int) and name == "to_bytes":
        return args, _int(args[0] if args else kwargs.get("length", 1))
    if not isinstance(owner, (str, bytes)):
        return args, None
    if name == "join" and len(args) == 1 and not kwargs:
        items = list(args[0])
        size = sum(len(x) for x in items if isinstance(x, (str, bytes))) + max(0, len(items) - 1) * len(owner)
        return (items,), size
    return args, _method_size(name, owner, args, kwargs)


def _lines(s, size: int) -> int:
    return s.count("\n") + 1 if isinstance(s, str) else size + 1


# filters that run in Python, out of the clock's reach, and slowly (textwrap: 3 s on 300,000 characters):
# the most characters each is given
SLOW_FILTER_CHARS = {"wordwrap": 1 << 16, "urlize": 1 << 16}

# filter name -> (measured size of its value, its bound arguments by name, measure) -> bound on its result
FILTER_SIZES = {
    "center": lambda n, a, m: n + _int(a["width"]),
    "indent": lambda n, a, m: n + _lines(a["s"], n) * (len(a["width"]) if isinstance(a["width"], str)
                                                       else _int(a["width"])),
    "wordwrap": lambda n, a, m: n * (1 + len(str(a["wrapstring"] or "\n"))),
    "truncate": lambda n, a, m: n + len(str(a["end"])),
    "replace": lambda n, a, m: replace_size(a["s"], a["old"], a["new"], -1 if a["count"] is None else a["count"])
    or n + (n + 1) * max(0, len(str(a["new"])) - len(str(a["old"]))),  # not all strings: every gap may change
    "format": lambda n, a, m: percent_size(str(a["value"]), a["kwargs"] or a["args"], m),
    "join": lambda n, a, m: n + max(0, len(a["value"]) - 1) * len(str(a["d"])),
    "sum": lambda n, a, m: n + (len(a["start"]) if isinstance(a["start"], (str, list, tuple)) else 0),
    "urlize": lambda n, a, m: n * (16 + len(str(a["target"] or "")) + len(str(a["rel"] or ""))),
    "urlencode": lambda n, a, m: 12 * n,  # a UTF-8 byte is %XX, a character up to 4 bytes
    "xmlattr": lambda n, a, m: 6 * n + 8,
    "pprint": lambda n, a, m: 2 * n,
    **{name: (lambda n, a, m: 5 * n) for name in ("escape", "e", "forceescape")},  # " -> &#34;
    **{name: (lambda n, a, m: 3 * n) for name in ("upper", "lower", "title", "capitalize")},
    "round": lambda n, a, m: abs(_int(a["precision"])),  # 10 ** precision digits, for round(x, -10**9)
    "batch": lambda n, a, m: _int(a["linecount"]) if a["fill_with"] is not None else 0,
    "slice": lambda n, a, m: _int(a["slices"]),
}
