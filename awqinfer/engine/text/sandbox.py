"""LimitedSandbox: jinja2's immutable sandbox, with every way to build something big gated by a Budget.

jinja2's sandbox keeps a template away from Python's internals (``''.__class__`` is refused)
but not from exhausting memory or time. Everything that can cost more than the size of what
it reads asks the render's Budget (template_limits.py) first, before it builds anything:

    * ** + %                   call_binop: the result's size (or an integer's bits) estimated
    calls                      str/bytes/int methods' results estimated (center, replace, join, to_bytes, ...);
                               macros, blocks and recursive loops counted for depth; arguments measured
    str.format                 its fields' widths and values estimated
    filters, comparing tests   the value measured; amplifying filters estimated (sizes.py); tojson is
                               written chunk by chunk under the budget
    for loops, range()         every iteration counted; range() bounded
    ~, comparisons, dict keys  rewritten (_Gates) into calls that measure their operands first
    output                     finalize and concat: counted as it is written

A refusal raises LimitExceeded, which chat_template.py turns into an awqinfer error.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator, Mapping
from types import MethodType

import jinja2
import jinja2.ext
from jinja2 import nodes, pass_context
from jinja2.runtime import BlockReference, LoopContext, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

from .sizes import FILTER_SIZES, SLOW_FILTER_CHARS, call_size, format_size, percent_size
from .template_limits import LimitExceeded, budget, current

MAX_JSON_INDENT = 64  # tojson's indent; each nesting level repeats it on every line
_NESTED = (Macro, BlockReference, LoopContext)  # calls one level deeper: counted against call_depth
# filters that neither print, compare nor hash their value: it is not measured first
_SHALLOW_FILTERS = frozenset({"abs", "attr", "batch", "count", "d", "default", "first", "float", "int", "items",
                              "last", "length", "list", "map", "random", "reject", "rejectattr", "reverse",
                              "round", "select", "selectattr", "slice"})
_COMPARING_TESTS = frozenset({"!=", "<", "<=", "==", ">", ">=", "eq", "equalto", "ge", "greaterthan", "gt", "in",
                              "le", "lessthan", "lt", "ne"})
_SEQUENCES = (str, bytes, list, tuple)
_SCALARS = frozenset({str, int, float, bool, type(None)})  # compared and hashed in time linear in their size
_SCOPE_KWARGS = ("_loop_vars", "_block_vars")  # the scope jinja2 hands every call inside a loop or block


class LimitedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox chat templates compile in: HF's settings (trim_blocks, lstrip_blocks, loop
    controls) plus ``filters`` and ``globals``, all under the running render's budget."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, filters: dict | None = None, globals: dict | None = None):
        super().__init__(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols],
                         finalize=self._written)
        self.globals.pop("lipsum")  # lorem ipsum of any length; no chat template uses it
        self.globals.update(globals or {}, range=limited_range)
        self.filters.update(filters or {}, tojson=tojson)
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}
        self.tests = {name: _guard_test(name, f) if name in _COMPARING_TESTS else f for name, f in self.tests.items()}

    def compile_limited(self, source: str, filename: str) -> jinja2.Template:
        """Parse, put the gates in (_Gates), compile; raises jinja2.TemplateSyntaxError on bad syntax."""
        tree = _Gates(self).visit(self.parse(source))
        return self.template_class.from_code(self, self.compile(tree, filename=filename), self.make_globals(None))

    # --- what jinja2 calls for every operator, call, attribute and output -------------------------------

    def call_binop(self, context, operator: str, left, right):
        """``left <operator> right`` for * ** + %: its size (or an integer's bits) estimated before it is computed."""
        b = budget()
        size = _binop_size(b, operator, left, right)
        if size is not None:
            b.expect(size, f"'{operator}'")
        result = self.binop_table[operator](left, right)
        if size is not None:
            b.charge(result, f"'{operator}'")
        return result

    def call(self, context, obj, /, *args, **kwargs):
        """Every call a template makes: macros counted for depth, arguments measured, amplifiers estimated."""
        if type(obj) is MethodType and obj.__self__ is self:  # a gate that _Gates put in
            return obj(*args)
        b, name = budget(), _name(obj)
        b.tick()
        if isinstance(obj, _NESTED):
            b.enter(name)
            try:
                result = super().call(context, obj, *args, **kwargs)
            finally:
                b.leave()
        else:
            for key, value in (*enumerate(args), *kwargs.items()):
                if key not in _SCOPE_KWARGS:
                    b.measure(value, f"passes {name}")
            args, size = call_size(obj, args, kwargs)
            if size is not None:
                b.expect(size, name)
            result = super().call(context, obj, *args, **kwargs)
        b.charge(result, name)
        return result

    def getattr(self, obj, attribute):
        """``obj.attribute``, as the sandbox allows it, after a look at the clock."""
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        """``obj[argument]``, as the sandbox allows it, after a look at the clock."""
        _tick()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value):
        """``str.format``/``format_map`` as the sandbox wraps them, with the result's size estimated first."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt, is_map = value.__self__, value.__name__ == "format_map"

        def limited_format(*args, **kwargs):
            b = budget()
            values = list(args[0].values()) if is_map and args and isinstance(args[0], Mapping) \
                else [*args, *kwargs.values()]
            b.expect(format_size(fmt, values, lambda v: b.measure(v, "formats")), "str.format()")
            return wrapped(*args, **kwargs)

        return limited_format

    def _written(self, value):
        """finalize: every ``{{ value }}`` is measured before it is printed, and counted."""
        b = current()
        if b is None:  # a constant, finalized while compiling
            return value
        if not isinstance(value, str):
            b.measure(value, "writes")
            value = str(value)
        b.charge(value, "its output")
        return value

    def concat(self, pieces) -> str:
        """Join what a template, macro, block or ``set`` block wrote, counting it as it comes."""
        b = current()
        return "".join(pieces) if b is None else b.join(pieces, "its output")

    # --- the gates _Gates calls ------------------------------------------------------------------------

    def loop_gate(self, iterable):
        """A for loop's iterable, each iteration counted."""
        b = budget()
        for item in iterable:
            b.step()
            yield item

    def concat_gate(self, *parts) -> str:
        """``a ~ b ~ c``: the parts measured before they are joined."""
        b = budget()
        b.expect(sum(b.measure(p, "joins with '~'") for p in parts), "'~'")
        text = "".join(map(str, parts))
        b.charge(text, "'~'")
        return text

    def checked(self, value):
        """A value about to be compared or hashed (as a dict key), measured first unless it is a plain scalar."""
        if type(value) not in _SCALARS:
            budget().measure(value, "compares or hashes")
        return value


class _Gates(NodeTransformer):
    """Rewrites a parsed template so that loops, ``~``, comparisons and dict keys pass the sandbox's gates."""

    def __init__(self, env: LimitedSandbox):
        self.env = env

    def gate(self, name: str, at: nodes.Node, *args: nodes.Expr) -> nodes.Call:
        call = nodes.Call(nodes.EnvironmentAttribute(name), list(args), [], None, None)
        return call.set_lineno(at.lineno).set_environment(self.env)

    def visit_For(self, node: nodes.For) -> nodes.For:
        self.generic_visit(node)
        node.iter = self.gate("loop_gate", node, node.iter)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Call:
        self.generic_visit(node)
        return self.gate("concat_gate", node, *node.nodes)

    def visit_Compare(self, node: nodes.Compare) -> nodes.Compare:
        self.generic_visit(node)
        node.expr = self.gate("checked", node, node.expr)
        for operand in node.ops:
            operand.expr = self.gate("checked", node, operand.expr)
        return node

    def visit_Dict(self, node: nodes.Dict) -> nodes.Dict:
        self.generic_visit(node)
        for pair in node.items:
            if not isinstance(pair.key, nodes.Const):
                pair.key = self.gate("checked", node, pair.key)
        return node


def _tick() -> None:
    b = current()
    if b is not None:  # None while compiling: constant folding reads attributes too
        b.tick()


def _name(obj) -> str:
    """How an error names a callee: "the macro 'm'", "the block 'b'", "replace()"."""
    if isinstance(obj, Macro):
        return f"the macro {obj.name!r}"
    if isinstance(obj, BlockReference):
        return f"the block {obj.name!r}"
    if isinstance(obj, LoopContext):
        return "a recursive loop"
    return f"{getattr(obj, '__name__', type(obj).__name__)}()"


def _binop_size(b, operator: str, left, right) -> int | None:
    """What ``left <operator> right`` would build (None: a number); refuses integers past the bit limit."""
    ints = isinstance(left, int) and isinstance(right, int)
    if ints and operator in ("*", "**"):
        if operator == "*":
            bits = left.bit_length() + right.bit_length()
        else:
            bits = 1 if right <= 0 or abs(left) <= 1 else right * left.bit_length()
        if bits > b.limits.int_bits:
            raise LimitExceeded(f"computes an integer of about {bits:,} bits with '{operator}'; "
                                f"the limit is {b.limits.int_bits:,}")
        return None
    escaping = 5 if isinstance(left, Markup) or isinstance(right, Markup) else 1  # Markup escapes the other side
    if operator == "%" and isinstance(left, (str, bytes)):
        return escaping * percent_size(left, right, lambda v: b.measure(v, "formats with '%'"))
    if operator == "*":
        seq, n = (left, right) if isinstance(right, int) else (right, left)
        if isinstance(seq, _SEQUENCES) and isinstance(n, int):
            return len(seq) * max(n, 0)
    if operator == "+" and isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
        return escaping * (len(left) + len(right))
    return None


def limited_range(*args) -> range:
    """range() for templates: at most the budget's range_items numbers."""
    numbers, limit = range(*args), budget().limits.range_items
    try:
        count = len(numbers)
    except OverflowError:  # more than fits a machine integer
        count = None
    if count is None or count > limit:
        raise LimitExceeded(f"asks for range{args}, {'over 2**63' if count is None else f'{count:,}'} numbers; "
                            f"the limit is {limit:,}")
    return numbers


def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    """HF's ``tojson`` (json.dumps without HTML escaping), written chunk by chunk under the budget."""
    b = budget()
    width = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else 0
    if width > MAX_JSON_INDENT:
        raise LimitExceeded(f"asks tojson for an indent of {width:,}; the limit is {MAX_JSON_INDENT}")
    encoder = json.JSONEncoder(ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    return b.join(encoder.iterencode(value), "tojson")


def _guard_filter(name: str, func):
    """``func`` as a filter under the budget: its value measured (unless shallow), its result estimated and counted.

    The guard passes the context (so jinja2 never runs it while compiling) and hands ``func``
    the context, eval context or environment it was declared to take.
    """
    kind = getattr(func, "jinja_pass_arg", None)  # set by jinja2's pass_context & co.
    estimate = FILTER_SIZES.get(name)
    signature = inspect.signature(func) if estimate else None  # of the function under jinja2's async wrapper
    signature_lead = () if getattr(inspect.unwrap(func), "jinja_pass_arg", None) is None else (None,)
    label = f"the filter '{name}'"

    @pass_context
    def guarded(context, value, *args, **kwargs):
        b = budget()
        b.tick()
        lead = () if kind is None else ({"context": context, "eval_context": context.eval_ctx,
                                          "environment": context.environment}[kind.name],)
        size = 0
        if name not in _SHALLOW_FILTERS:
            if isinstance(value, Iterator):  # a generator (map, select, ...): its items are what gets measured
                value = list(value)
            size = b.measure(value, f"gives {label}")
            for arg in (*args, *kwargs.values()):
                b.measure(arg, f"gives {label}")
            if size > SLOW_FILTER_CHARS.get(name, size):
                raise LimitExceeded(f"gives {label} {size:,} characters; it runs out of the clock's reach, so on "
                                    f"at most {SLOW_FILTER_CHARS[name]:,}")
        if estimate is not None:
            bound = signature.bind(*signature_lead, value, *args, **kwargs)
            bound.apply_defaults()
            b.expect(estimate(size, bound.arguments, lambda v: b.measure(v, f"gives {label}")), label)
        result = func(*lead, value, *args, **kwargs)
        b.charge(result, label)
        return result

    return guarded


def _guard_test(name: str, func):
    """A comparing test (``is eq``, ``is in``, ...) whose operands are measured before they are compared."""

    @pass_context
    def guarded(context, *args, **kwargs):
        b = budget()
        for value in (*args, *kwargs.values()):
            b.measure(value, f"gives the test '{name}'")
        return func(*args, **kwargs)

    return guarded
