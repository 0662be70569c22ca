"""Engines for the scale-out tests, importable by name in replica processes (spawned) and Ray actors.

A replica builds its engine from a picklable factory; these are module-level so a spawned child can import them
(``multiprocessing`` passes the parent's ``sys.path``, which holds tests/).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from llama_index.core.bridge.pydantic import PrivateAttr

from offline_embft.core.config import GenerateConfig
from offline_embft.generate.llm import BatchLLM, Sampling
from offline_embft.generate.scale.replicas import REPLICA_ENV

SEPARATOR = "---------------------"


def chunk_of(prompt: str) -> str:
    """The chunk text inside a prompt rendered from the built-in template."""
    return prompt.split(SEPARATOR)[1].strip()


class QuestionLLM(BatchLLM):
    """Answers each prompt with a question about its chunk, a function of (chunk, seed) only, like a seeded engine.

    ``die_on_call``: in the replica whose index is ``die_replica``, SIGKILL its own process when that engine call
    starts (an out-of-memory kill or a GPU fault, as the kernel would do it: no cleanup, no goodbye).
    """

    backend = "question-script"

    _die_on_call: int | None = PrivateAttr(default=None)
    _seconds_per_prompt: float = PrivateAttr(default=0.0)

    def __init__(self, *, die_on_call: int | None = None, seconds_per_prompt: float = 0.0) -> None:
        super().__init__(model_name="question-script", sampling=Sampling(max_tokens=64, seed=42))
        self._die_on_call = die_on_call
        self._seconds_per_prompt = seconds_per_prompt

    def _generate(self, prompts: list[str], sampling: Sampling) -> list[str | None]:
        if self.engine_calls == self._die_on_call:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(self._seconds_per_prompt * len(prompts))
        return [f"问题：{chunk_of(p)[:8]}（{sampling.seed}）是什么？" for p in prompts]


def question_engine(cfg: GenerateConfig, template: str, **kwargs: Any) -> QuestionLLM:
    """Factory for :class:`QuestionLLM` (bind the keyword arguments with functools.partial)."""
    return QuestionLLM(**kwargs)


def dying_question_engine(cfg: GenerateConfig, template: str, *, die_replica: str, die_on_call: int) -> QuestionLLM:
    """A :class:`QuestionLLM` that kills its own replica (index ``die_replica``) at engine call ``die_on_call``."""
    mine = os.environ.get(REPLICA_ENV) == die_replica
    return QuestionLLM(die_on_call=die_on_call if mine else None)
