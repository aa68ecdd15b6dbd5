"""The sandbox templates render in: Jinja2's ImmutableSandboxedEnvironment with StrictUndefined, and a budget
per render (RENDER_SECONDS, MAX_OUTPUT) checked inside it. Loops, calls and attribute lookups watch the clock;
whatever can grow a value (`*`, `+`, `~`, `%`, literals, filters, str methods, the prompt itself) is measured
before or as it is built; a template sees read-only copies of its variables, so that no cell can change
another's. runner.spec.templates compiles and renders through it."""

from __future__ import annotations

import re
import string
import time
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache, update_wrapper
from typing import Any, NoReturn

RENDER_SECONDS = 2.0
"""Longest one render may take. The shipped templates render in about a millisecond; the limit only ends
loops and recursion that would otherwise never finish (`pov validate` once hung on two nested ranges)."""

MAX_OUTPUT = 1_000_000
"""Most characters one render may produce, and the largest value it may build on the way (a list counts as
its text). A prompt of five 180-word chunks is about 10 KB: a megabyte is past any model's context."""

MAX_INT_BITS = 10_000
"""Largest whole number a template may compute (Python will not print one past 4,300 digits anyway)."""

FOLD_LIMIT = 10_000
"""Largest value Jinja may fold into the compiled code: a bigger constant waits for the render's budget."""

_BUDGET: ContextVar[tuple[float, int] | None] = ContextVar("pov_template_budget", default=None)
_JINJA_KWARGS = ("_loop_vars", "_block_vars")
_PERCENT = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")


@contextmanager
def budget(limit: int = MAX_OUTPUT) -> Iterator[None]:
    token = _BUDGET.set((time.monotonic() + RENDER_SECONDS, limit))
    try:
        yield
    finally:
        _BUDGET.reset(token)


def _refuse(message: str) -> NoReturn:
    from jinja2.exceptions import SecurityError

    raise SecurityError(message)


def _tick() -> None:
    budget = _BUDGET.get()
    if budget is not None and time.monotonic() > budget[0]:
        _refuse(
            f"the template took more than {RENDER_SECONDS:g} s to render (the render budget): a loop or macro "
            "runs far too long; loop over the chunks and statements it is given, not over large ranges"
        )


def _fits(size: int, what: str) -> None:
    budget = _BUDGET.get()
    if size > (budget[1] if budget else MAX_OUTPUT):
        _refuse(
            f"{what} would produce more than {MAX_OUTPUT / 1e6:g} MB ({MAX_OUTPUT:,} characters, the render "
            "budget of one prompt): a prompt needs far less; check the counts, widths and loops that build it"
        )


def _size(value: Any, limit: int = MAX_OUTPUT) -> int:
    """About how many characters `value` prints as, counted only until past `limit`, so that measuring a
    huge value (a list of a million references to one string) costs no more than measuring a small one."""
    if isinstance(value, str):
        return len(value)
    from jinja2.utils import Namespace

    total, stack = 0, [value]
    while stack and total <= limit:
        v: Any = stack.pop()
        if isinstance(v, (str, bytes, bytearray)):
            total += len(v)
        elif isinstance(v, int):
            total += v.bit_length() // 3 + 1
        elif isinstance(v, (list, tuple, set, frozenset, KeysView, ValuesView, ItemsView, Mapping)):
            total += 2 + 2 * len(v)
            if total <= limit:
                stack.extend((*v.keys(), *v.values()) if isinstance(v, Mapping) else v)
        elif isinstance(v, Namespace):
            total += 16
            stack.append(object.__getattribute__(v, "_Namespace__attrs"))
        else:
            total += 8
    return total


def _checked(value: Any, what: str = "the template") -> Any:
    _fits(_size(value), what)
    return value


def _as_is(value: Any) -> Any:
    return value


def _bounded_iter(iterable: Iterable[Any]) -> Iterator[Any]:
    for item in iterable:
        _tick()
        yield item


def _collect(iterable: Iterable[Any], what: str = "the template") -> tuple[Any, ...]:
    """An iterable read into a tuple, measured as it is read: the generators a template chains
    (`range(n)|map('center', w)`) would otherwise build everything in one call that cannot be stopped."""
    items, total = [], 0
    for item in _bounded_iter(iterable):
        total += _size(item) + 2
        _fits(total, what)
        items.append(item)
    return tuple(items)


def _bounded_join(pieces: Iterable[str]) -> str:
    """The environment's `concat`: what joins the prompt, and every macro, `set` block and call block."""
    parts, total = [], 0
    for piece in pieces:
        total += len(piece)
        _fits(total, "the template")
        parts.append(piece)
    return "".join(parts)


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _replaced_size(s: Any, old: Any, new: Any, count: Any) -> int:
    hits = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return int(len(s) + hits * max(len(new) - len(old), 0))


def _percent_size(fmt: str | bytes, args: Any) -> int:
    """An upper bound on `fmt % args`: its text, its arguments, and every width and precision it asks for."""
    text = fmt if isinstance(fmt, str) else fmt.decode("latin-1")
    total = len(text) + _size(args)
    for group in (g for m in _PERCENT.finditer(text) for g in m.groups() if g):
        ints = (v for v in (args if isinstance(args, tuple) else (args,)) if isinstance(v, int))
        total += sum(map(abs, ints)) if group == "*" else int(group)  # `*`: a width taken from the arguments
    return total


def _format_size(text: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """An upper bound on `text.format(...)`: each field at most every argument, plus its widths."""
    fields = [spec or "" for _, name, spec, _ in string.Formatter().parse(text) if name is not None]
    total = len(text) + len(fields) * (_size(args) + _size(kwargs))
    total += sum(int(n) for spec in fields for n in re.findall(r"\d+", spec))
    if any("{" in spec for spec in fields):  # a width taken from the arguments
        total += sum(abs(v) for v in (*args, *kwargs.values()) if isinstance(v, int))
    return total


def _method_size(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    """The size of what a str/bytes method (or int.to_bytes) is about to build, for those that can grow."""
    obj = getattr(obj, "__wrapped__", obj)  # Jinja wraps str.format in a sandboxed formatter
    owner, name = getattr(obj, "__self__", None), getattr(obj, "__name__", None)
    first = args[0] if args else None
    if isinstance(owner, int) and name == "to_bytes":
        return _int(kwargs.get("length", first))
    if not isinstance(owner, (str, bytes, bytearray)):
        return None
    n = len(owner)
    if name in ("center", "ljust", "rjust", "zfill"):
        return max(n, _int(kwargs.get("width", first)))
    if name == "expandtabs":
        tab: Any = "\t" if isinstance(owner, str) else b"\t"
        return n + owner.count(tab) * _int(kwargs.get("tabsize", 8 if first is None else first))
    if name == "replace" and len(args) >= 2:
        return _replaced_size(owner, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count", -1))
    if name == "join" and args:
        return _size(first) + n * len(first)  # type: ignore[arg-type]
    if name == "translate" and isinstance(first, Mapping):
        return n * max((len(v) for v in first.values() if isinstance(v, (str, bytes))), default=1)
    if name == "format" and isinstance(owner, str):
        return _format_size(owner, args, kwargs)
    if name == "format_map" and isinstance(owner, str) and isinstance(first, Mapping):
        return _format_size(owner, (), first)
    return None


def _sum_size(iterable: tuple[Any, ...], attribute: Any = None, start: Any = 0) -> int:
    if len(iterable) > 1000 and not all(isinstance(x, (int, float)) for x in iterable):
        # sum() of sequences copies the total once per item: quadratic time in one uninterruptible call.
        _refuse("the sum filter over more than 1,000 lists or strings is too slow for a template; use join")
    return _size(start) + _size(iterable)


# What a filter is about to build, for the filters whose output an argument can grow (every filter's result
# is measured too). Each mirrors its filter's signature, after the context argument some filters take.
_FILTER_SIZES: dict[str, Callable[..., int]] = {
    "replace": lambda s, old, new, count=None: _replaced_size(str(s), str(old), str(new), count),
    "center": lambda value, width=80: max(_size(value), _int(width)),
    "indent": lambda s, width=4, first=False, blank=False: (
        len(str(s)) + (str(s).count("\n") + 1) * (len(width) if isinstance(width, str) else _int(width))
    ),
    "format": lambda value, *args, **kwargs: _percent_size(str(value), kwargs or args),
    "join": lambda value, d="", attribute=None: _size(value) + len(str(d)) * len(value),
    "sum": _sum_size,
    "wordwrap": lambda s, width=79, break_long_words=True, wrapstring=None, break_on_hyphens=True: (
        (len(str(s)) + 1) * (1 + len(str(wrapstring or "\n")))
    ),
    "batch": lambda value, linecount, fill_with=None: (
        _size(value) + (0 if fill_with is None else _int(linecount) * (_size(fill_with) + 2))
    ),
    "slice": lambda value, slices, fill_with=None: _size(value) + _int(slices) * (_size(fill_with) + 2),
    "tojson": lambda value, indent=None: (
        _size(value) * (1 + 2 * (len(indent) if isinstance(indent, str) else _int(indent)))
    ),
    "urlize": lambda value, trim_url_limit=None, nofollow=False, target=None, rel=None, extra_schemes=None: (
        3 * len(str(value)) + (len(str(value)) // 4 + 1) * (60 + _size(target) + _size(rel))
    ),
}


def _bounded_filter(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    size, what = _FILTER_SIZES.get(name), f"the {name} filter"
    lead = 1 if getattr(f, "jinja_pass_arg", None) is not None else 0  # the context Jinja passes first

    def run(*args: Any, **kwargs: Any) -> Any:
        _tick()
        if len(args) > lead and isinstance(args[lead], Iterator):
            args = (*args[:lead], _collect(args[lead], what), *args[lead + 1 :])
        if size is not None:
            _fits(size(*args[lead:], **kwargs), what)
        return _checked(f(*args, **kwargs), what)

    return update_wrapper(run, f)


def _read_only_error(*_: Any, **__: Any) -> NoReturn:
    raise TypeError("a template's variables are read-only")


class ReadOnlyList(list[Any]):
    """A list a template can read but not change; it prints, compares and serialises as the list it copies,
    so that a template that prints a variable makes the same prompt as with the original."""

    __slots__ = ()
    append = extend = insert = pop = remove = clear = sort = reverse = _read_only_error
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only_error


class ReadOnlyDict(dict[Any, Any]):
    """A dict a template can read but not change (see ReadOnlyList)."""

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = _read_only_error
    clear = pop = popitem = setdefault = update = _read_only_error


def read_only(value: Any) -> Any:
    """A deep read-only copy: each render gets its own, so that nothing a template does reaches another."""
    if isinstance(value, Mapping):
        return ReadOnlyDict((k, read_only(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        items = (read_only(v) for v in value)
        return tuple(items) if isinstance(value, tuple) else ReadOnlyList(items)
    return frozenset(value) if isinstance(value, (set, frozenset)) else value


@lru_cache(maxsize=1)
def environment() -> Any:
    from jinja2 import StrictUndefined, nodes
    from jinja2.exceptions import SecurityError
    from jinja2.runtime import Context, Undefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment, modifies_known_mutable
    from jinja2.utils import generate_lorem_ipsum
    from jinja2.visitor import NodeTransformer

    class Bound(NodeTransformer):
        """Routes what runs without a call the sandbox sees through one: a loop's iterable (bounded_iter),
        `*args` (bounded_collect), and the values `~` and literals build (env.call measures results)."""

        def wrap(self, name: str, node: Any) -> nodes.Expr:
            return nodes.Call(nodes.EnvironmentAttribute(name), [node], [], None, None, lineno=node.lineno)

        def generic_visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> nodes.Node:
            node = super().generic_visit(node)
            if isinstance(node, nodes.For):
                node.iter = self.wrap("bounded_iter", node.iter)
            if isinstance(node, (nodes.Call, nodes.Filter, nodes.Test)) and node.dyn_args is not None:
                node.dyn_args = self.wrap("bounded_collect", node.dyn_args)
            if isinstance(node, (nodes.Concat, nodes.List, nodes.Dict)) or (
                isinstance(node, nodes.Tuple) and node.ctx == "load"
            ):
                return self.wrap("bounded_value", node)
            return node

    def lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
        _fits(_int(n) * _int(max) * 12, "lipsum")
        return str(generate_lorem_ipsum(n, html, min, max))

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"+", "*", "**", "%"})
        bounded_iter = staticmethod(_bounded_iter)
        bounded_collect = staticmethod(_collect)
        bounded_value = staticmethod(_as_is)  # measured by `call`, as every call's result is

        def __init__(self) -> None:
            # keep_trailing_newline: the rendered prompt is exactly the file's text, byte for byte.
            super().__init__(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)
            self.concat = _bounded_join  # type: ignore[method-assign]
            self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
            self.globals["lipsum"] = lipsum

        def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
            tree = Bound().visit(super()._parse(source, name, filename))
            tree.set_environment(self)
            return tree  # type: ignore[no-any-return]

        def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
            _tick()
            if operator == "**" and isinstance(right, int) and right > 64 and abs(left) > 1:
                raise SecurityError(f"exponent {right} is too large for a template")
            if isinstance(left, int) and isinstance(right, int) and operator in ("*", "**"):
                bits = (
                    left.bit_length() * right if operator == "**" else left.bit_length() + right.bit_length()
                )
                if bits > MAX_INT_BITS:
                    raise SecurityError(f"`{operator}` would make a number over {MAX_INT_BITS:,} bits")
            elif operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(n, int) and not isinstance(seq, (int, float)):
                        _fits(_size(seq) * n, "`*`")
            elif operator == "+":
                _fits(_size(left) + _size(right), "`+`")
            elif operator == "%" and isinstance(left, (str, bytes)):
                _fits(_percent_size(left, right), "`%`")
            return _checked(super().call_binop(context, operator, left, right), f"`{operator}`")

        def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
            _tick()
            name = getattr(getattr(obj, "__wrapped__", obj), "__name__", None)
            what = f"`{name}`" if isinstance(name, str) and not name.startswith("_") else "the template"
            if name == "join" and args and isinstance(getattr(obj, "__self__", None), (str, bytes)):
                args = (_collect(args[0], what), *args[1:])  # measured before joining, so read once
            # Jinja passes the loop and block variables along; they are not the method's arguments.
            size = _method_size(obj, args, {k: v for k, v in kwargs.items() if k not in _JINJA_KWARGS})
            if size is not None:
                _fits(size, what)
            return _checked(super().call(context, obj, *args, **kwargs), what)

        def getattr(self, obj: Any, attribute: str) -> Any:
            _tick()
            return super().getattr(obj, attribute)

        def getitem(self, obj: Any, argument: Any) -> Any:
            _tick()
            return super().getitem(obj, argument)

        def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
            if not modifies_known_mutable(obj, attribute):
                return super().unsafe_undefined(obj, attribute)
            return self.undefined(
                f"`{attribute}` would change one of the template's variables, and templates cannot change "
                "their variables (each cell must see them as written): build a new value instead, "
                "e.g. `pov_statements + ['...']`, or keep running state in a namespace()",
                name=attribute,
                obj=obj,
                exc=SecurityError,
            )

    return BoundedSandbox()
