"""Entry points: "package.module:Name" names an object in an importable module (Gymnasium's
convention), so a user's own policy, drafter or workload source plugs in by name. Shared by the
policy, drafter and workload registries; each checks the object's kind itself."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def is_entry_point(spec) -> bool:
    """Whether `spec` is a string of the form "package.module:Name"."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        return False
    module, _, attr = spec.strip().partition(":")
    return all(part.isidentifier() for part in module.split(".")) and attr.isidentifier()


def import_entry_point(spec: str, what: str, error: type[ValueError] = ValueError) -> Any:
    """The object "package.module:Name" names (None when the module has no such name); a module that
    cannot be imported raises `error` in one line, `what` naming the kind (policy, drafter, ...)."""
    module_name, _, attr = spec.strip().partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(f"{what} {spec!r}: cannot import module {module_name!r} ({exc})") from None
    return getattr(module, attr, None)


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` (PEP 562) for `package`: `exports` maps a name to the module it
    lives in, imported on the name's first use (a package's heavy parts load only when asked for)."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
