"""What every doctor check returns and shares: a screen line (:class:`Check`) with its verdict, and which stages the
screen is for."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

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


def runs_vllm(cfg: PipelineConfig, stages: Iterable[str] | None) -> bool:
    """Whether vLLM will run: the vllm backend, and generate among ``stages`` (every stage when none is named)."""
    return cfg.generate.backend == "vllm" and "generate" in chosen_stages(stages)
