"""The ranges of config values, declared beside each field and checked in one walk.

A field states its range in its annotation, with annotated-types' ``Ge``, ``Gt``, ``Le``, ``Lt``,
``Interval`` and ``MinLen``::

    resolution: Annotated[int, Interval(ge=2, le=1024)] = 256   # samples per box side

:func:`check_fields` walks a whole config once: every float must be finite, every value within its
range, and the first that is not raises :class:`ConfigError` naming the dotted key. Upper bounds
keep a run's memory in reach (they are refused before any work, not after a fit).
"""

from __future__ import annotations

import dataclasses
import math
import operator
import typing
from typing import Annotated, Any

import annotated_types as at

from fastsider.errors import FastsiderError


class ConfigError(FastsiderError, ValueError):
    """A config file or override that does not fit the schema."""


Count = Annotated[int, at.Ge(0)]           # steps, passes, items: 0 or more
AtLeastOne = Annotated[int, at.Ge(1)]      # a batch, an interval between steps: 1 or more
NonNegative = Annotated[float, at.Ge(0)]   # a loss weight, a duration, a margin: 0 or more
Positive = Annotated[float, at.Gt(0)]      # a step size, a length, a factor: above 0

_BOUNDS = ((at.Gt, "gt", ">", operator.gt), (at.Ge, "ge", ">=", operator.ge), (at.Lt, "lt", "<", operator.lt),
           (at.Le, "le", "<=", operator.le))


def check_fields(cfg: Any, prefix: str = "") -> None:
    """Check every field of the dataclass ``cfg`` and of the dataclasses in it, depth first."""
    hints = typing.get_type_hints(type(cfg), include_extras=True)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_fields(value, f"{prefix}{f.name}.")
        else:
            _check_value(f"{prefix}{f.name}", value, hints[f.name])


def _check_value(key: str, value: Any, tp: Any) -> None:
    constraints: list[Any] = []
    if typing.get_origin(tp) is Annotated:
        tp, *metadata = typing.get_args(tp)
        for c in metadata:
            constraints += list(c) if isinstance(c, at.Interval) else [c]
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value}")
    if not all(_holds(c, value) for c in constraints):
        shown = list(value) if isinstance(value, tuple) else value
        raise ConfigError(f"{key} must be {' and '.join(_describe(c) for c in constraints)}, got {shown!r}")
    if isinstance(value, tuple):
        item_tp = typing.get_args(tp)[0]
        for i, item in enumerate(value):
            _check_value(f"{key}[{i}]", item, item_tp)


def _holds(c: Any, value: Any) -> bool:
    if isinstance(c, at.MinLen):
        return len(value) >= c.min_length
    if isinstance(c, at.MaxLen):
        return len(value) <= c.max_length
    for kind, attr, _, holds in _BOUNDS:
        if isinstance(c, kind):
            return holds(value, getattr(c, attr))
    raise TypeError(f"unsupported config constraint {c!r}")


def _describe(c: Any) -> str:
    if isinstance(c, at.MinLen):
        return f"a list of at least {c.min_length} value(s)"
    if isinstance(c, at.MaxLen):
        return f"a list of at most {c.max_length} value(s)"
    for kind, attr, op, _ in _BOUNDS:
        if isinstance(c, kind):
            return f"{op} {_number(getattr(c, attr))}"
    raise TypeError(f"unsupported config constraint {c!r}")


def _number(x: float) -> str:
    """A bound as written in the schema: 2^22 for a large power of two, else the shortest form."""
    if isinstance(x, int) and x >= 1 << 16 and x & (x - 1) == 0:
        return f"2^{x.bit_length() - 1}"
    return f"{x:g}"
