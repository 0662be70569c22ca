"""The config fields' help text, shown where users look: a CLI flag's help (:func:`field_help`),
``offline-embft config --keys`` and docs/config.md (:func:`keys_markdown`). The text itself is written once, on the
field in the section modules of :mod:`offline_embft.core.config`."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from offline_embft.core.config.pipeline import PipelineConfig


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def describe(cls: type = PipelineConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every field, in declaration order: ``offline-embft config --keys`` and the docs."""
    rows: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            rows.extend(describe(hints[f.name], key + "."))
            continue
        rows.append((key, repr(_default(f)), f.metadata.get("help", "")))
    return rows


def field_help(cls: type, name: str) -> str:
    """A config field's help text with its key and default, as a command-line flag shows it.

    Raises:
        KeyError: ``cls`` has no field ``name`` (a CLI flag naming a field that does not exist).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    f = fields[name]
    hints = typing.get_type_hints(PipelineConfig)
    section = next((s.name for s in dataclasses.fields(PipelineConfig) if hints[s.name] is cls), "")
    key = f"{section}.{name}" if section else name
    default = _default(f)
    shown = f", default {default}" if default not in ("", [], None) else ""
    return f"{f.metadata['help']} (config: {key}{shown})"


def keys_markdown() -> str:
    """docs/config.md: every config key with its default and help (``offline-embft config --keys`` prints it)."""
    lines = [
        "# Configuration keys",
        "",
        "Every key below can be set in the YAML config (`--config`), with `--set key=value`, and — where a stage has",
        "one — with that stage's flag, whose help is this same text. Generated from the config dataclasses by",
        "`offline-embft config --keys > docs/config.md`; empty paths are filled from the artifact layout.",
        "",
        "| key | default | help |",
        "|---|---|---|",
    ]
    lines += [f"| `{key}` | `{default}` | {text.replace('|', '/')} |" for key, default, text in describe()]
    return "\n".join(lines) + "\n"
