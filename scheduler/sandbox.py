"""The bounded Jinja2 sandbox message templates render in.

Jinja2's `SandboxedEnvironment` keeps a template away from Python internals but not from the
machine's memory and time: `{{ 'a'*10**9 }}` allocates a gigabyte and three nested loops never
end. Office staff edit these templates and an approved one can still meet real data it was not
tried on, so every render here has a budget:

- `range()` yields at most `range_items` numbers; all `for` loops of one render together run
  at most `loop_iterations` times (each loop's iterable is wrapped at parse time);
- string and list repetition, `%`/`format` widths, padding methods and filters, `+` and
  namespace assignments may not build a value longer than `value_chars`;
- the output may not exceed `output_chars` (an SMS a few thousand characters, a letter more);
- a render stops after `seconds` of wall-clock time: the clock is checked at every loop
  iteration, call, attribute lookup, operator and output chunk, which is where a template
  spends its time.

A breach raises `TemplateLimitError` naming the limit; the catalogue reports it with the
template's file and line.
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import Namespace

from scheduler.exceptions import TemplateError


class TemplateLimitError(TemplateError):
    """A template exceeded a resource limit."""

    # The template line, when the limit was found outside the template's own code.
    lineno: int | None = None


@dataclass(frozen=True)
class Limits:
    seconds: float = 1.0
    range_items: int = 1_000
    loop_iterations: int = 10_000
    value_chars: int = 10_000
    output_chars: int = 2_000
    # Integer arithmetic beyond this many bits (10**1233) is refused.
    int_bits: int = 4_096


SMS_LIMITS = Limits()
LETTER_LIMITS = Limits(value_chars=200_000, output_chars=200_000)

_SIZED = (str, list, tuple, dict, set, frozenset, bytes)
# Methods whose integer argument sets the size of what they build.
_PADDING_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})
# Filters whose integer arguments set the size or count of what they build.
_SIZING_FILTERS = frozenset({"center", "indent", "wordwrap", "truncate", "batch", "slice"})
# printf-style width or precision given as `*` or with five digits or more.
_PRINTF_WIDE = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d{5,})|%[-#0 +\d]*\.(?:\*|\d{5,})")
# str.format spec with a nested field or a five-digit width/precision.
_FORMAT_WIDE = re.compile(r"\{[^{}]*:[^{}]*(?:\{|\d{5,})")


class _Budget:
    """One render's clock and loop count."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.seconds
        self.iterations = 0

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(
                f"rendering took longer than {self.limits.seconds:g} s (time limit)"
            )

    def tick(self) -> None:
        self.iterations += 1
        if self.iterations > self.limits.loop_iterations:
            raise TemplateLimitError(
                f"loops ran more than {self.limits.loop_iterations} iterations (loop limit)"
            )
        self.check_time()


_budget: ContextVar[_Budget | None] = ContextVar("pingan_template_budget", default=None)


def _check_time() -> None:
    budget = _budget.get()
    if budget is not None:
        budget.check_time()


class BoundedNamespace(Namespace):
    """`namespace()` whose attributes cannot grow past the value limit (`{% set ns.s = ns.s ~
    ns.s %}` in a loop doubles a string each time)."""

    limit = SMS_LIMITS.value_chars

    def __setitem__(self, name: str, value: Any) -> None:
        _check_size(value, type(self).limit, "namespace value")
        _check_time()
        super().__setitem__(name, value)


def _check_size(value: Any, limit: int, what: str) -> None:
    if isinstance(value, _SIZED) and len(value) > limit:
        raise TemplateLimitError(f"{what} of {len(value)} items exceeds {limit} (size limit)")


def _check_printf(fmt: str) -> None:
    if _PRINTF_WIDE.search(fmt):
        raise TemplateLimitError("format width or precision too large (size limit)")


class BoundedSandbox(SandboxedEnvironment):
    """A `SandboxedEnvironment` that enforces `Limits` (see the module docstring)."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, limits: Limits, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.limits = limits
        namespace = type("namespace", (BoundedNamespace,), {"limit": limits.value_chars})
        self.globals.pop("lipsum", None)
        self.globals["range"] = self._range
        self.globals["namespace"] = namespace
        self.filters = {name: self._bounded_filter(name, f) for name, f in self.filters.items()}

    # -- parse time: every loop's iterable goes through `pingan_loop` ---------------------

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in list(tree.find_all(nodes.For)):
            loop.iter = nodes.Call(
                nodes.EnvironmentAttribute("pingan_loop", lineno=loop.lineno),
                [loop.iter],
                [],
                None,
                None,
                lineno=loop.lineno,
            )
        return tree

    def pingan_loop(self, iterable: Iterable[Any]) -> Iterator[Any]:
        budget = _budget.get()
        for item in iterable:
            if budget is not None:
                budget.tick()
            yield item

    def _range(self, *args: int) -> range:
        rng = range(*args)
        if len(rng) > self.limits.range_items:
            raise TemplateLimitError(
                f"range of {len(rng)} items exceeds {self.limits.range_items} (range limit)"
            )
        return rng

    # -- run time hooks -----------------------------------------------------------------

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_time()
        limit = self.limits.value_chars
        if operator == "**":
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and abs(left) > 1
                and right > 0
                and left.bit_length() * right > self.limits.int_bits
            ):
                raise TemplateLimitError("power too large (size limit)")
        elif operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, _SIZED) and isinstance(n, int) and len(seq) * n > limit:
                    raise TemplateLimitError(
                        f"repetition would build {len(seq) * n} items, more than {limit} "
                        "(size limit)"
                    )
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and left.bit_length() + right.bit_length() > self.limits.int_bits
            ):
                raise TemplateLimitError("product too large (size limit)")
        elif operator == "%" and isinstance(left, str):
            _check_printf(left)
        result = super().call_binop(context, operator, left, right)
        _check_size(result, limit, f"result of {operator!r}")
        return result

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_time()
        limit = __self.limits.value_chars
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, _SIZED):
            _check_size(owner, limit, "value")
            if getattr(__obj, "__name__", "") in _PADDING_METHODS:
                for a in (*args, *kwargs.values()):
                    if isinstance(a, int) and a > limit:
                        raise TemplateLimitError(
                            f"{__obj.__name__}({a}) exceeds {limit} characters (size limit)"
                        )
        for a in args:
            _check_size(a, limit, "argument")
        for key, a in kwargs.items():
            if not key.startswith("_"):
                _check_size(a, limit, "argument")
        result = super().call(__context, __obj, *args, **kwargs)
        _check_size(result, limit, "result")
        return result

    def getattr(self, obj: Any, attribute: str) -> Any:
        _check_time()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _check_time()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__
        if _FORMAT_WIDE.search(fmt):
            raise TemplateLimitError("format width too large or nested (size limit)")
        return wrapped

    def _bounded_filter(self, name: str, f: Callable[..., Any]) -> Callable[..., Any]:
        limit = self.limits.value_chars

        @functools.wraps(f)
        def bounded(*args: Any, **kwargs: Any) -> Any:
            _check_time()
            values = [a for a in (*args, *kwargs.values()) if not isinstance(a, Context)]
            if name in _SIZING_FILTERS:
                for a in values[1:]:
                    if isinstance(a, int) and a > limit:
                        raise TemplateLimitError(f"filter {name}({a}) exceeds {limit} (size limit)")
            if name == "format":
                fmt = next((a for a in values if isinstance(a, str)), "")
                _check_printf(fmt)
            result = f(*args, **kwargs)
            _check_size(result, limit, f"result of filter {name}")
            return result

        return bounded


def render_bounded(template: Any, context: Mapping[str, Any], limits: Limits) -> str:
    """Render with a fresh budget; the output is cut off (an error) past `output_chars`."""
    budget = _Budget(limits)
    token = _budget.set(budget)
    stream = template.generate(**context)
    try:
        out: list[str] = []
        length = 0
        for chunk in stream:
            length += len(chunk)
            if length > limits.output_chars:
                exc = TemplateLimitError(
                    f"output longer than {limits.output_chars} characters (output limit)"
                )
                exc.lineno = _current_line(template, stream)
                raise exc
            budget.check_time()
            out.append(chunk)
        return "".join(out)
    finally:
        with contextlib.suppress(Exception):
            stream.close()
        _budget.reset(token)


def _current_line(template: Any, stream: Any) -> int | None:
    """The template line a suspended render is at (its innermost generator's frame)."""
    frame = None
    gen = stream
    while gen is not None and getattr(gen, "gi_frame", None) is not None:
        frame = gen.gi_frame
        gen = getattr(gen, "gi_yieldfrom", None)
    if frame is None:
        return None
    try:
        return int(template.get_corresponding_lineno(frame.f_lineno))
    except Exception:
        return None
