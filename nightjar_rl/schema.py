"""Configuration declared once: a dataclass field made with `option(...)` carries its default, its
documentation and its bounds, and everything else is derived from that declaration:

- `check(obj, where)` validates every declared field (one `ConfigError` line naming the field);
- `from_mapping(cls, data, where)` builds a config from YAML/JSON (unknown fields are errors);
- `add_arguments(parser, cls)` makes the CLI flags (`--max-batch-size`: type, default, choices and
  help from the declaration), and `from_namespace(cls, args)` reads them back.

So a scenario file, a CLI flag and a server setting cannot disagree on a default or a bound.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A configuration value that cannot be used (the message names the field, in one line)."""


@dataclass(frozen=True)
class Declaration:
    """What a field is: its kind, documentation and bounds (read by check/add_arguments)."""

    kind: type  # int | float | str | bool | dict | list
    doc: str
    low: float | None = None  # inclusive lower bound (numbers)
    high: float | None = None  # inclusive upper bound (numbers)
    above: float | None = None  # exclusive lower bound (numbers)
    choices: tuple | None = None  # allowed values (strings)
    nullable: bool = False  # None allowed ("unset")
    flag: bool = True  # exposed as a CLI flag by add_arguments
    metavar: str | None = None


def option(default: Any, doc: str, kind: type | None = None, **bounds) -> Any:
    """A dataclass field declared with its documentation and bounds (see `Declaration`).
    `kind` defaults to the default's type; a None default needs `kind` (and is nullable)."""
    if kind is None:
        if default is None:
            raise TypeError("option(None, ...) needs kind=")
        kind = type(default)
    if default is None:
        bounds.setdefault("nullable", True)
    meta = {"declaration": Declaration(kind, doc, **bounds)}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def declarations(cls) -> dict[str, Declaration]:
    """The declared fields of a dataclass (type or instance), in declaration order."""
    return {f.name: f.metadata["declaration"] for f in dataclasses.fields(cls) if "declaration" in f.metadata}


def defaults(cls) -> dict[str, Any]:
    """Each declared field's default."""
    out = {}
    for f in dataclasses.fields(cls):
        if "declaration" in f.metadata:
            out[f.name] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return out


def _describe(d: Declaration) -> str:
    if d.choices is not None:
        text = "one of " + ", ".join(str(c) for c in d.choices)
    else:
        text = {int: "an integer", float: "a number", str: "a non-empty string", bool: "true or false",
                dict: "a mapping", list: "a list"}[d.kind]
        if d.low is not None and d.high is not None:
            text += f" in [{d.low:g}, {d.high:g}]"
        elif d.above is not None and d.high is not None:
            text += f" in ({d.above:g}, {d.high:g}]"
        elif d.low is not None:
            text += f" >= {d.low:g}"
        elif d.above is not None:
            text += f" > {d.above:g}"
    return text + (" or null" if d.nullable else "")


def check_value(name: str, value: Any, d: Declaration, where: str) -> Any:
    """`value` if it fits declaration `d` (ints accepted for floats), else ConfigError naming `name`."""
    if value is None and d.nullable:
        return None
    ok = False
    if d.kind is bool:
        ok = isinstance(value, bool)
    elif d.kind is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif d.kind is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    elif d.kind is str:
        ok = isinstance(value, str) and bool(value)
    elif d.kind is dict:
        ok = isinstance(value, Mapping)
    elif d.kind is list:
        ok = isinstance(value, Sequence) and not isinstance(value, str)
    if ok and d.kind in (int, float):
        ok = ((d.low is None or value >= d.low) and (d.high is None or value <= d.high)
              and (d.above is None or value > d.above))
    if ok and d.choices is not None:
        ok = value in d.choices
    if not ok:
        raise ConfigError(f"{where}: field '{name}' must be {_describe(d)}, got {value!r}")
    return value


def check(obj, where: str) -> None:
    """Validate every declared field of dataclass instance `obj`."""
    for name, d in declarations(obj).items():
        check_value(name, getattr(obj, name), d, where)


def from_mapping(cls, data: Mapping, where: str, **fixed):
    """`cls(**data, **fixed)` after rejecting unknown fields (validation is the class's own)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of fields, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s): {', '.join(map(str, unknown))}")
    return cls(**data, **fixed)


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls, skip: Sequence[str] = (),
                  overrides: Mapping[str, Any] | None = None) -> None:
    """One CLI flag per declared field of `cls` (except `skip` and fields declared flag=False), its
    default the declaration's (or `overrides[field]`). Values are checked by the class, not argparse,
    so bad input gets the same one-line error from a flag as from a file."""
    overrides = overrides or {}
    base = defaults(cls)
    for name, d in declarations(cls).items():
        if name in skip or not d.flag:
            continue
        default = overrides.get(name, base[name])
        help_text = d.doc + ("" if default is None else f" (default: {default})")
        if d.kind is bool:
            parser.add_argument(flag_name(name), action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        parser.add_argument(flag_name(name), type=d.kind if d.kind in (int, float, str) else str, default=default,
                            choices=d.choices, help=help_text, metavar=d.metavar)


def from_namespace(cls, args: argparse.Namespace, **changes):
    """The declared fields of `cls` read from parsed flags (missing flags keep their defaults),
    validated by the class's `validate(where)`; errors name the flag (`--max-batch-size`), not the field."""
    values = {name: getattr(args, name) for name in declarations(cls) if hasattr(args, name)}
    config = cls(**{**values, **changes})
    try:
        return config.validate("flags")
    except ConfigError as exc:
        message = re.sub(r"field '([a-z_]+)'", lambda m: flag_name(m[1]), str(exc))
        raise ConfigError(message.removeprefix("flags: ")) from None
