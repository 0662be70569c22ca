"""The command line's shared parts (:mod:`offline_embft.cli` declares the commands with them): choice enums built
from the config's tuples, flags and arguments whose help is the config field's own text, ``--config``/``--set``,
loading the resolved config, and the guard that turns a user error into one line and exit code 2."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from offline_embft.core.config import (
    BACKENDS,
    CHUNKINGS,
    ENGINES,
    EXTEND_VOCAB,
    LOSSES,
    POOLINGS,
    RERANKER_LOSSES,
    STAGES,
    PipelineConfig,
    load_config,
)
from offline_embft.core.config.help import field_help
from offline_embft.core.errors import UserError


def _choices(name: str, values: tuple[str, ...]) -> Any:
    """A str Enum of a config field's allowed values (typer shows and checks them; the config lists them once)."""
    return Enum(name, [(value.replace("-", "_"), value) for value in values], type=str)


Backend = _choices("Backend", BACKENDS)
Chunking = _choices("Chunking", CHUNKINGS)
Engine = _choices("Engine", ENGINES)
Pooling = _choices("Pooling", POOLINGS)
Loss = _choices("Loss", LOSSES)
ExtendVocab = _choices("ExtendVocab", EXTEND_VOCAB)
RerankerLoss = _choices("RerankerLoss", RERANKER_LOSSES)
StageName = _choices("StageName", STAGES)


def opt(section: type, name: str, *decls: str) -> Any:
    """A flag whose help is the config field's own help text (written once, on the field)."""
    return typer.Option(*decls, help=field_help(section, name))


def arg(section: type, name: str) -> Any:
    """An argument whose help is the config field's own help text."""
    return typer.Argument(help=field_help(section, name))


ConfigOpt = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="YAML config (configs/default.yaml, configs/cpu.yaml).")
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override any config key, e.g. --set train.lr=2e-5 (repeatable)."),
]


def value(option: Any) -> Any:
    """Enum members to their plain values; everything else unchanged."""
    return option.value if isinstance(option, Enum) else option


def load(config: Path | None, overrides: list[str] | None) -> PipelineConfig:
    """The resolved pipeline config: defaults < ``--config`` YAML < ``--set`` overrides, empty paths filled."""
    return load_config(config, overrides).resolve()


def guard(action: Callable[[], Any]) -> Any:
    """Run a command body; a user error becomes one line on stderr and exit code 2."""
    try:
        return action()
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: finished work is kept; run the same command again to resume", err=True)
        raise typer.Exit(130) from None
