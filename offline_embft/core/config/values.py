"""Turning YAML and command-line values into the typed fields of the config dataclasses, or one line saying why
a value does not fit (used by :mod:`offline_embft.core.config.files`)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from offline_embft.core.errors import UserError


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """Turn a YAML or command-line value into the field's declared type, or fail with one line."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return None if value is None else coerce(value, args[0], where)
    if origin is list:
        (item_type,) = typing.get_args(annotation) or (str,)
        if isinstance(value, str):
            value = [v for v in (p.strip() for p in value.split(",")) if v]
        if not isinstance(value, list):
            raise UserError(f"{where} must be a list, got {value!r}")
        return [coerce(v, item_type, where) for v in value]
    try:
        if annotation is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                return lowered in ("1", "true", "yes", "on")
            return bool(value)
        if annotation is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        if annotation in (int, float):
            return annotation(value)
        if annotation is str:
            if isinstance(value, bool):
                # YAML 1.1 reads a bare on/off/yes/no as a boolean; string choices (extend_vocab, ...) mean on/off.
                return "on" if value else "off"
            return "" if value is None else str(value)
    except (TypeError, ValueError):
        raise UserError(f"{where} must be {annotation.__name__}, got {value!r}") from None
    return value


def build(cls: type, data: dict[str, Any], where: str) -> Any:
    """An instance of the dataclass ``cls`` from a (YAML) mapping, nested sections included; ``where`` names the
    section in errors. Unknown keys fail with one line listing the valid ones."""
    if not isinstance(data, dict):
        raise UserError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(
            f"unknown config key {where + '.' if where else ''}{unknown[0]}; valid keys: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build(hint, value or {}, key)
        else:
            kwargs[name] = coerce(value, hint, key)
    return cls(**kwargs)
