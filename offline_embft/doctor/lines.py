"""What every doctor check returns and shares: a screen line (:class:`Check`) with its verdict, and which stages the
screen is for."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from offline_embft.core.config import STAGES, PipelineConfig
from offline_embft.core.errors import UserError

OK, WARN, FAIL = "OK", "WARN", "FAIL"
RANK = {OK: 0, WARN: 1, FAIL: 2}
GIB = 1024**3


@dataclass
class Check:
    """One line of the doctor's screen."""

    name: str
    verdict: str
    detail: str


def chosen_stages(stages: Iterable[str] | None) -> tuple[str, ...]:
    """The stages to check for, in pipeline order (every stage when none is named).

    Raises:
        UserError: a name is not a stage.
    """
    chosen = set(stages or ())
    if not chosen:
        return STAGES
    unknown = sorted(chosen - set(STAGES))
    if unknown:
        raise UserError(f"{', '.join(unknown)} is not a stage; use one of {', '.join(STAGES)}")
    return tuple(stage for stage in STAGES if stage in chosen)


def backend_of(cfg: PipelineConfig) -> Any:
    """The class of the configured question-generation backend: its facts say what the machine needs for it."""
    from offline_embft.generate.llm import backend_class

    return backend_class(cfg.generate.backend)


def runs_vllm(cfg: PipelineConfig, stages: Iterable[str] | None) -> bool:
    """Whether a GPU engine will run: a backend that needs a GPU (vLLM), and generate among ``stages`` (every stage
    when none is named)."""
    return "generate" in chosen_stages(stages) and backend_of(cfg).needs_gpu
