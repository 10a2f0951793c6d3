"""Turn a TOML table into a frozen dataclass, strictly.

Each component owns the dataclass of its own config section (``scp.config``,
``pipeline.scoring.agatston``, ...); this module only knows how to fill one from a
``dict``: unknown keys are errors, values are type-checked against the field
annotations, and every error names the full key (``scp.port``).  Range checks
live in each dataclass's ``__post_init__`` and raise ``ValueError``; they are
re-raised here with the section name attached.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or section that cannot be used, with the key at fault."""


def from_table(cls: type[T], table: dict[str, Any] | None, section: str) -> T:
    """Build ``cls`` from a TOML table; missing keys take the dataclass default.

    Parameters
    ----------
    cls
        A frozen dataclass type.
    table
        The parsed TOML table (``None`` means the section is absent).
    section
        Dotted name of the section, used in error messages.
    """
    table = {} if table is None else table
    if not isinstance(table, dict):
        raise ConfigError(f"{section}: expected a table, got {type(table).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    missing = [
        name
        for name, f in fields.items()
        if name not in table and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{section}: missing key(s) {', '.join(missing)}")
    values = {}
    for name, value in table.items():
        values[name] = _coerce(hints[name], value, f"{section}.{name}")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{section}: {exc}") from None


def _variant(options: tuple[Any, ...], value: Any, key: str) -> type | None:
    """The dataclass among ``options`` that a table's ``kind`` names (the one whose ``kind`` has a default, if absent).

    None when ``options`` are not dataclasses told apart by a ``kind`` literal
    (``[[destinations]]`` are): each table is then built as exactly one of them,
    so its errors speak of that kind, not of the first one tried.
    """
    kinds: dict[Any, type] = {}
    default: type | None = None
    for option in options:
        if not dataclasses.is_dataclass(option):
            return None
        kind = next((f for f in dataclasses.fields(option) if f.name == "kind"), None)
        hint = typing.get_type_hints(option).get("kind")
        if kind is None or typing.get_origin(hint) is not typing.Literal:
            return None
        kinds.update((k, option) for k in typing.get_args(hint))
        if kind.default is not dataclasses.MISSING:
            default = option
    if not isinstance(value, dict):
        return None
    if "kind" not in value:
        if default is None:
            raise ConfigError(f"{key}: missing key kind")
        return default
    if value["kind"] not in kinds:
        raise ConfigError(f"{key}.kind: must be one of {', '.join(map(repr, kinds))}, got {value['kind']!r}")
    return kinds[value["kind"]]


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check ``value`` against ``hint`` and convert TOML lists to tuples."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        variant = _variant(args, value, key)
        if variant is not None:
            return from_table(variant, value, key)
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if dataclasses.is_dataclass(hint):
        return from_table(hint, value, key)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a path string, got {value!r}")
        return Path(value)
    raise ConfigError(f"{key}: unsupported setting type {hint!r}")  # a programming error in a dataclass
