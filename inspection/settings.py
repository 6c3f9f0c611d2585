"""Typed settings from TOML: frozen dataclasses, every bad field reported at once.

A settings class is a frozen dataclass whose fields are declared with :func:`setting` (range, unit, choices,
documentation). :func:`from_mapping` builds it from a parsed TOML table, converting and checking every field and
collecting *all* problems into one :class:`SettingsError`, each naming the field's dotted path, the value and
what is allowed. Cross-field rules live in the class's ``__post_init__`` (raise ``ValueError`` naming the
field); their messages join the list too.

Examples
--------
>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Optics:
...     spot_sigma_um: float = setting(5.0, minimum=0.1, maximum=100.0, unit="µm", doc="Gaussian spot σ")
>>> from_mapping(Optics, {"spot_sigma_um": 2.5})
Optics(spot_sigma_um=2.5)
"""

from __future__ import annotations

import dataclasses
import enum
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_NO_DEFAULT = dataclasses.MISSING


def setting(
    default: Any = _NO_DEFAULT,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    unit: str = "",
    choices: tuple[Any, ...] | None = None,
    doc: str = "",
) -> Any:
    """Declare a settings field with its allowed range and documentation."""
    metadata = {
        "minimum": minimum,
        "maximum": maximum,
        "exclusive_minimum": exclusive_minimum,
        "unit": unit,
        "choices": choices,
        "doc": doc,
    }
    if isinstance(default, (list, dict)):
        raise TypeError("use a tuple, not a mutable default")
    return dataclasses.field(default=default, metadata=metadata)


class SettingsError(ValueError):
    """One or more settings are wrong. ``problems`` lists one message per bad field."""

    def __init__(self, problems: list[str], *, source: str = "") -> None:
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{len(problems)} problem(s){where}:\n{lines}")


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a missing or malformed file is a :class:`SettingsError` naming the file."""
    path = Path(path)
    try:
        with path.open("rb") as stream:
            return tomllib.load(stream)
    except FileNotFoundError:
        raise SettingsError([f"file not found: {path}"], source=str(path)) from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError([f"not valid TOML: {error}"], source=str(path)) from None
    except OSError as error:
        raise SettingsError([f"cannot read: {error}"], source=str(path)) from None


def from_mapping(cls: type[T], data: Mapping[str, Any], *, source: str = "", path: str = "") -> T:
    """Build settings class ``cls`` from ``data``; raise :class:`SettingsError` listing every problem."""
    problems: list[str] = []
    result = _build(cls, data, path, problems)
    if problems:
        raise SettingsError(problems, source=source)
    return typing.cast(T, result)


def to_mapping(settings: Any) -> dict[str, Any]:
    """The TOML-ready form of a settings object (enums by value, tuples as lists); round-trips with
    :func:`from_mapping`."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if value is None:
            continue  # TOML has no null: an absent key means "use the default", which is None
        out[field.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_mapping(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    return value


def _build(cls: type, data: Any, path: str, problems: list[str]) -> Any:
    if not isinstance(data, Mapping):
        problems.append(f"{path or 'settings'}: expected a table, got {data!r}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            problems.append(f"{path}{key}: unknown setting (known: {known})")
    values: dict[str, Any] = {}
    before = len(problems)
    for name, field in fields.items():
        dotted = f"{path}{name}"
        if name not in data:
            if field.default is _NO_DEFAULT and field.default_factory is _NO_DEFAULT:
                problems.append(f"{dotted}: missing (required{_describe(field)})")
            continue
        converted = _convert(hints[name], data[name], dotted, field, problems)
        if converted is not _INVALID:
            values[name] = converted
    if len(problems) > before:
        return None
    try:
        return cls(**values)
    except ValueError as error:
        for line in str(error).splitlines():
            problems.append(f"{path}{line.strip()}" if path else line.strip())
        return None


_INVALID = object()


def _describe(field: dataclasses.Field[Any]) -> str:
    meta = field.metadata
    parts = []
    if meta.get("choices"):
        parts.append("one of " + ", ".join(repr(_plain(c)) for c in meta["choices"]))
    elif meta.get("minimum") is not None or meta.get("maximum") is not None:
        parts.append(f"{range_text(meta)}")
    if meta.get("doc"):
        parts.append(meta["doc"])
    return ": " + "; ".join(parts) if parts else ""


def range_text(meta: Mapping[str, Any]) -> str:
    """The allowed range of a :func:`setting`'s metadata as messages show it, e.g. ``[1, 5000] µm`` or ``> 0 s``."""
    low, high, unit = meta.get("minimum"), meta.get("maximum"), meta.get("unit", "")
    suffix = f" {unit}" if unit else ""
    if low is not None and high is not None:
        left = "(" if meta.get("exclusive_minimum") else "["
        return f"{left}{low:g}, {high:g}]{suffix}"
    if low is not None:
        return f"{'>' if meta.get('exclusive_minimum') else '>='} {low:g}{suffix}"
    return f"<= {high:g}{suffix}"


def _convert(hint: Any, value: Any, dotted: str, field: dataclasses.Field[Any] | None, problems: list[str]) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _convert(options[0], value, dotted, field, problems)
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            problems.append(f"{dotted}: expected a table, got {value!r}")
            return _INVALID
        return dict(value)
    if dataclasses.is_dataclass(hint):
        before = len(problems)
        built = _build(hint, value, dotted + ".", problems)
        return built if len(problems) == before else _INVALID
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            problems.append(f"{dotted}: expected a list, got {value!r}")
            return _INVALID
        item_hint = args[0] if args else Any
        items = [_convert(item_hint, item, f"{dotted}[{i}]", field, problems) for i, item in enumerate(value)]
        return _INVALID if any(item is _INVALID for item in items) else tuple(items)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            allowed = ", ".join(repr(member.value) for member in hint)
            problems.append(f"{dotted}: {value!r} is not one of {allowed}")
            return _INVALID
    if hint is bool:
        if not isinstance(value, bool):
            problems.append(f"{dotted}: expected true or false, got {value!r}")
            return _INVALID
        return value
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{dotted}: expected a number, got {value!r}")
            return _INVALID
        if hint is int and float(value) != int(value):
            problems.append(f"{dotted}: expected an integer, got {value!r}")
            return _INVALID
        number = hint(value)
        if not math.isfinite(number):
            problems.append(f"{dotted}: {value!r} is not finite")
            return _INVALID
        problem = range_problem(dotted, value, field.metadata) if field is not None else None
        if problem is not None:
            problems.append(problem)
            return _INVALID
        return _check_choices(number, dotted, field, problems)
    if hint is str:
        if not isinstance(value, str):
            problems.append(f"{dotted}: expected text, got {value!r}")
            return _INVALID
        return _check_choices(value, dotted, field, problems)
    return value


def _in_range(number: float, meta: Mapping[str, Any]) -> bool:
    """Whether ``number`` lies in the range a :func:`setting`'s metadata allows (its minimum may be exclusive)."""
    low, high = meta.get("minimum"), meta.get("maximum")
    if low is not None and (number < low or (meta.get("exclusive_minimum") and number == low)):
        return False
    return not (high is not None and number > high)


def range_problem(name: str, value: float, meta: Mapping[str, Any]) -> str | None:
    """The message for a number outside a :func:`setting`'s range (NaN and infinities included), or None."""
    if math.isfinite(value) and _in_range(value, meta):
        return None
    return f"{name}: {value!r} is outside the allowed range {range_text(meta)}"


def _check_choices(value: Any, dotted: str, field: dataclasses.Field[Any] | None, problems: list[str]) -> Any:
    choices = field.metadata.get("choices") if field is not None else None
    if choices and value not in choices:
        problems.append(f"{dotted}: {value!r} is not one of {', '.join(repr(c) for c in choices)}")
        return _INVALID
    return value
