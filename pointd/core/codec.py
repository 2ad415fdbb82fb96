"""The core's one typed JSON codec: frozen dataclasses to plain JSON values and back, strictly.

Events (``pointd.core.events``) and snapshots (``pointd.core.snapshot``) are both written
with ``encode`` and read with ``decode_dataclass``, so a field means the same thing in the
journal's events and in its snapshots, and both refuse the same mistakes: an unknown or a
missing field, a value of the wrong type (a bool is never an integer, an integer is a
number), an enum value that does not exist. Types are read from each class's annotations,
so adding a field to a record is the whole change.

The error raised names where the value was (``state.sales[3].timers[0]``) and is the
caller's own class (``EventDecodeError``, ``StateDecodeError``), so a caller never has to
translate.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from enum import StrEnum
from typing import Any, Union

from pointd.core.errors import CoreError

_MISSING = dataclasses.MISSING


def encode(value: Any) -> Any:
    """A JSON-able value: dataclasses as objects, tuples as lists, enums by value."""
    if isinstance(value, tuple):
        return [encode(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, StrEnum):
        return value.value
    return value


# Resolving string annotations costs more than the rest of a decode; a replay decodes every
# journaled event, so each class's hints are resolved once.
_TYPE_HINTS: dict[type[Any], dict[str, Any]] = {}


def _type_hints(cls: type[Any]) -> dict[str, Any]:
    hints = _TYPE_HINTS.get(cls)
    if hints is None:
        hints = _TYPE_HINTS[cls] = typing.get_type_hints(cls)
    return hints


def decode_dataclass(cls: type[Any], body: object, where: str, error: type[CoreError], *,
                     defaults: bool = False) -> Any:
    """An instance of ``cls`` from its ``encode``d object; raise ``error`` when malformed.

    ``defaults``: a missing field that has a default takes it (events whose class gained a
    field after older journals were written); otherwise every field must be present.
    """
    if not isinstance(body, dict):
        raise error(f"{where}: expected an object")
    hints = _type_hints(cls)
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    unknown = sorted(str(key) for key in set(body) - names)
    if unknown:
        raise error(f"{where}: unknown fields {unknown[:5]}")
    missing = [f.name for f in fields if f.name not in body
               and not (defaults and (f.default is not _MISSING
                                      or f.default_factory is not _MISSING))]
    if missing:
        raise error(f"{where}: missing fields {missing}")
    values = {name: decode(hints[name], value, f"{where}.{name}", error)
              for name, value in body.items()}
    return cls(**values)


def decode(hint: Any, value: Any, where: str, error: type[CoreError]) -> Any:
    """The value of type ``hint`` that ``encode`` turned into ``value``."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return decode(inner, value, where, error)
    if origin is tuple:
        return _decode_tuple(typing.get_args(hint), value, where, error)
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        try:
            return hint(value)
        except ValueError:
            shown = str(value)[:40]
            raise error(f"{where}: {shown!r} is not a {hint.__name__}") from None
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return decode_dataclass(hint, value, where, error)
    if hint is bool:
        if not isinstance(value, bool):
            raise error(f"{where}: expected a boolean")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise error(f"{where}: expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise error(f"{where}: expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise error(f"{where}: expected a string")
        return value
    raise error(f"{where}: unsupported field type {hint!r}")


def _decode_tuple(items: tuple[Any, ...], value: Any, where: str,
                  error: type[CoreError]) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise error(f"{where}: expected a list")
    if len(items) == 2 and items[1] is Ellipsis:  # tuple[X, ...]
        return tuple(decode(items[0], item, f"{where}[{index}]", error)
                     for index, item in enumerate(value))
    if len(value) != len(items):
        raise error(f"{where}: expected a list of {len(items)}")
    return tuple(decode(hint, item, f"{where}[{index}]", error)
                 for index, (hint, item) in enumerate(zip(items, value, strict=True)))
