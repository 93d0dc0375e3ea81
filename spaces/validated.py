"""Config dataclasses that check themselves when constructed, from a TOML file or from Python code alike.

The study loader (`search.config`) and a user building `Budget(finetune_steps=-1)` in a notebook must get
the same one-line message: every field's type and its `metadata` bounds (`min`, `max`, `choices`) are
checked in `__post_init__`, so no invalid config object can exist, whichever door it came through. The
loader only adds the file and key path in front of the message.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable
from enum import Enum
from typing import Any

T = typing.TypeVar("T")


class ConfigError(ValueError):
    """A config is invalid; the message names the key and what is allowed."""


def describe_type(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    return getattr(tp, "__name__", str(tp))


def check_value(tp: Any, value: Any, meta: typing.Mapping[str, Any], where: str) -> Any:
    """A scalar, a tuple of scalars (`tuple[int, ...]`) or a table of scalars (`tuple[tuple[str, Any], ...]`
    built from a mapping), checked and normalised (enums from their values, floats from ints)."""
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"config field type {tp} is not supported (use tuple[X, ...])")
        if meta.get("table"):
            return _table(value, where)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return tuple(check_value(args[0], v, meta, f"{where}[{i}]") for i, v in enumerate(value))
    return _check_scalar(tp, value, meta, where)


def _table(value: Any, where: str) -> tuple[tuple[str, Any], ...]:
    """Keyword arguments as sorted (key, value) pairs: hashable, and equal for equal tables."""
    if isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        value = dict(value)
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table of keyword arguments, got {type(value).__name__} {value!r}")
    plain = (bool, int, float, str)
    for k, v in value.items():
        items = v if isinstance(v, (list, tuple)) else [v]
        if not isinstance(k, str) or not all(isinstance(i, plain) for i in items):
            raise ConfigError(f"{where}.{k}: only numbers, strings, booleans and lists of them are allowed")
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in value.items()))


def _check_scalar(tp: Any, value: Any, meta: typing.Mapping[str, Any], where: str) -> Any:
    if isinstance(tp, type) and issubclass(tp, Enum):
        allowed = [m.value for m in tp]
        if isinstance(value, tp):
            return value
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not allowed; use one of {', '.join(map(repr, allowed))}")
        return tp(value)
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, str)}.get(tp)
    if ok is None:
        raise TypeError(f"config field type {tp} is not supported")
    if not ok:
        raise ConfigError(f"{where}: expected {describe_type(tp)}, got {type(value).__name__} {value!r}")
    value = float(value) if tp is float else value
    if "min" in meta and value < meta["min"] or "max" in meta and value > meta["max"]:
        raise ConfigError(f"{where}: {value!r} is out of range; allowed {meta.get('min', '-inf')} .. "
                          f"{meta.get('max', 'inf')}")
    choices = meta.get("choices")
    if choices is not None:
        allowed = list(choices() if callable(choices) else choices)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not allowed; use one of {', '.join(map(repr, allowed))}")
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_fields(obj: Any) -> None:
    """Check and normalise every init field of a frozen dataclass instance in place."""
    cls = type(obj)
    hints = _hints(cls)
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        tp, value = hints[f.name], getattr(obj, f.name)
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, tp):
                raise ConfigError(f"{cls.__name__}.{f.name}: expected a {tp.__name__}, got {type(value).__name__}")
            continue
        checked = check_value(tp, value, f.metadata, f"{cls.__name__}.{f.name}")
        if checked is not value:
            object.__setattr__(obj, f.name, checked)


def settings(klass: type[T]) -> type[T]:
    """`@settings` = `@dataclass(frozen=True, kw_only=True)` whose instances validate themselves; a class's own
    `__post_init__` (cross-field rules) runs after the field checks."""
    own: Callable[[Any], None] | None = klass.__dict__.get("__post_init__")

    def __post_init__(self: Any) -> None:
        check_fields(self)
        if own is not None:
            own(self)

    klass.__post_init__ = __post_init__  # type: ignore[attr-defined]
    return dataclasses.dataclass(frozen=True, kw_only=True)(klass)
