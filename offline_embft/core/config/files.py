"""A config's trip in and out of files: YAML plus ``section.key=value`` overrides in (:func:`load_config`),
command-line flags on top (:func:`apply_overrides`), the resolved config saved beside every artifact
(:func:`save_config`)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path, PurePath
from typing import Any

import yaml

from offline_embft.core.config.pipeline import PipelineConfig
from offline_embft.core.config.values import build, coerce
from offline_embft.core.errors import UserError
from offline_embft.core.io import write_text


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a pipeline config from YAML (or defaults when ``path`` is None) and apply ``section.key=value`` overrides.

    Raises:
        UserError: the file is missing or unreadable, a key is unknown, or a value has the wrong type.
    """
    data: dict[str, Any] = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file {path} not found; pass an existing YAML file (see configs/)")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"override {item!r} must look like section.key=value, e.g. train.lr=2e-5")
        *parents, leaf = key.strip().split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value) if value.strip() else ""
    return build(PipelineConfig, data, "")


def apply_overrides(section: Any, **values: Any) -> Any:
    """Set each non-None value on a stage config (command-line flags win over YAML), then re-validate."""
    hints = typing.get_type_hints(type(section))
    for name, value in values.items():
        if value is None:
            continue
        if name not in hints:
            raise KeyError(f"{type(section).__name__} has no field {name}")
        setattr(section, name, coerce(value, hints[name], name))
    section.__post_init__()
    return section


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict of a config dataclass (for YAML/JSON output); paths given as ``Path`` become strings."""
    return dataclasses.asdict(cfg, dict_factory=lambda items: {key: _plain(value) for key, value in items})


def _plain(value: Any) -> Any:
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def save_config(cfg: Any, path: str | Path) -> Path:
    """Save the resolved config of a stage beside its output, atomically, as YAML."""
    text = yaml.safe_dump(to_dict(cfg), allow_unicode=True, sort_keys=False)
    return write_text(path, text)
