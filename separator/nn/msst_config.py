"""Reading an MSST YAML section into a frozen config dataclass (for the non-RoFormer families).

MSST passes `model:` to its constructors in two ways, and unknown keys behave differently:
- `Class(**config.model)` (SCNet, Apollo): an unknown key is a TypeError in MSST, so it is a
  ConfigError here (`unknown="error"`);
- `Class(config)` reading attributes (MDX23C): MSST ignores keys it does not read, so they are
  accepted with one warning naming them (`unknown="warn"`).

Values are checked against the field's annotation (int, float, bool, str, tuple[int, ...],
tuple[float, ...], tuple[str, ...]); YAML lists and `!!python/tuple`s both become tuples. Every
error is one line naming `<section>.<key>`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any, TypeVar

from separator.errors import ConfigError

T = TypeVar("T")


def read_section(
    cls: type[T], values: Mapping[str, Any] | None, *, section: str, unknown: str = "error"
) -> T:
    """Build the frozen dataclass `cls` from `values`; defaults fill missing keys."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{section}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    extra = sorted(str(k) for k in values if k not in fields)
    if extra and unknown == "error":
        raise ConfigError(
            f"unknown key(s) {', '.join(f'{section}.{k}' for k in extra)} "
            f"(the reference constructor would refuse them too; known: {', '.join(fields)})"
        )
    if extra:
        warnings.warn(
            f"{section}: key(s) {', '.join(extra)} are ignored (MSST does not read them either)",
            stacklevel=3,
        )
    kwargs = {
        k: _convert(v, fields[k].type, f"{section}.{k}") for k, v in values.items() if k in fields
    }
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{section} lacks required key(s): {', '.join(missing)}")
    return cls(**kwargs)


def _convert(value: Any, annotation: Any, where: str) -> Any:
    kind = str(annotation).replace(" ", "")
    if kind.startswith("tuple["):
        item = kind[len("tuple[") :].split(",")[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list of {item}, got {value!r}")
        return tuple(_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value  # other annotations are checked by the dataclass itself


def positive(where: str, *values: int | float) -> None:
    """Raise a one-line ConfigError unless every value is > 0."""
    for v in values:
        if v <= 0:
            raise ConfigError(f"{where} must be positive, got {v!r}")
