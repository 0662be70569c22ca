"""What every question-generation backend shares: sampling settings and a batched LlamaIndex ``CustomLLM``.

A backend implements one method, :meth:`BatchLLM._generate`, that answers a whole list of prompts in ONE engine call.
The generate stage uses :meth:`BatchLLM.complete_batch` with large batches; LlamaIndex
(``generate_qa_embedding_pairs``, query engines) uses the ordinary ``complete``, which is a batch of one. Prompts
are plain user messages: each backend applies the model's chat template itself, with Qwen3's thinking mode off.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

from llama_index.core.base.llms.types import CompletionResponse, CompletionResponseGen, LLMMetadata
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_completion_callback

logger = logging.getLogger(__name__)

# Passed to every chat template: Qwen3 then writes an empty <think></think> block itself and answers directly.
# Templates that do not know the variable ignore it.
CHAT_TEMPLATE_KWARGS: dict[str, Any] = {"enable_thinking": False}


@dataclass(frozen=True)
class Sampling:
    """Sampling settings sent with every request; part of the answer-cache key."""

    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    min_p: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = 42

    @classmethod
    def from_config(cls, cfg: Any) -> Sampling:
        """The sampling settings of a :class:`~offline_embft.config.GenerateConfig`."""
        return cls(
            max_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            min_p=cfg.min_p,
            presence_penalty=cfg.presence_penalty,
            seed=cfg.seed,
        )

    def with_seed(self, seed: int | None) -> Sampling:
        """The same settings with another seed (None keeps this one)."""
        return self if seed is None else replace(self, seed=seed)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class BatchLLM(CustomLLM):
    """A LlamaIndex ``CustomLLM`` that also answers a list of prompts in one engine call.

    Subclasses implement :meth:`_generate`. ``complete_batch`` returns one answer per prompt, or None where the
    engine failed for that prompt (a server error after retries); callers retry those later rather than lose them.
    """

    model_name: str = "unknown"
    context_window: int = 4096
    num_output: int = 256

    # True for generators whose "questions" are pseudo-queries (sentences), not real questions (backend ict).
    pseudo_queries: ClassVar[bool] = False
    backend: ClassVar[str] = "base"

    _sampling: Sampling = PrivateAttr(default_factory=Sampling)
    _engine_calls: int = PrivateAttr(default=0)
    _fingerprint: str = PrivateAttr(default="")

    def __init__(self, *, model_name: str, sampling: Sampling, fingerprint: str = "", **kwargs: Any) -> None:
        super().__init__(model_name=model_name, num_output=sampling.max_tokens, **kwargs)
        self._sampling = sampling
        self._fingerprint = fingerprint or model_name

    @classmethod
    def class_name(cls) -> str:
        return f"offline_embft_{cls.backend}"

    @property
    def sampling(self) -> Sampling:
        """Default sampling settings of this LLM."""
        return self._sampling

    @property
    def engine_calls(self) -> int:
        """How many times the engine was called (one per batch)."""
        return self._engine_calls

    @property
    def identity(self) -> str:
        """Which model answers: the backend and a fingerprint of the model (part of the answer-cache key)."""
        return f"{self.backend}:{self._fingerprint}"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.num_output,
            model_name=self.model_name,
            is_chat_model=False,
        )

    def settings(self) -> dict[str, Any]:
        """Engine settings worth recording in the run's stats (overridden by backends with more to say)."""
        return {"backend": self.backend, "model": self.model_name}

    def complete_batch(self, prompts: Sequence[str], *, seed: int | None = None) -> list[str | None]:
        """Answer every prompt in one engine call.

        Args:
            prompts: User messages (the backend applies the chat template).
            seed: Sampling seed for this call (None: the default); retries pass another one.

        Returns:
            One answer per prompt, in order; None where the engine failed for that prompt.
        """
        if not prompts:
            return []
        self._engine_calls += 1
        answers = self._generate(list(prompts), self._sampling.with_seed(seed))
        if len(answers) != len(prompts):
            raise RuntimeError(f"{self.backend} returned {len(answers)} answers for {len(prompts)} prompts")
        return answers

    def _generate(self, prompts: list[str], sampling: Sampling) -> list[str | None]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the engine (GPU memory, threads). The LLM is unusable afterwards."""

    def _complete_one(self, prompt: str) -> str:
        (answer,) = self.complete_batch([prompt])
        if answer is None:
            # LlamaIndex's generate_qa_embedding_pairs retries on exceptions, so failing loudly is the useful thing.
            raise RuntimeError(f"{self.backend} engine returned no answer")
        return answer

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self._complete_one(prompt))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        text = self._complete_one(prompt)

        def gen() -> CompletionResponseGen:
            yield CompletionResponse(text=text, delta=text)

        return gen()


class CachedLLM(CustomLLM):
    """Wraps a :class:`BatchLLM` so that each ``complete`` is answered from (and saved to) the answer cache.

    Used for the ``llamaindex`` engine: LlamaIndex calls ``complete`` once per chunk, and its own resume skips chunks
    by position; with the cache, a rerun after a crash replays finished answers instead of asking the model again.
    """

    model_name: str = "cached"

    _inner: BatchLLM = PrivateAttr()
    _cache: Any = PrivateAttr()

    def __init__(self, inner: BatchLLM, cache: Any, **kwargs: Any) -> None:
        super().__init__(model_name=inner.model_name, **kwargs)
        self._inner = inner
        self._cache = cache

    @property
    def metadata(self) -> LLMMetadata:
        return self._inner.metadata

    def _answer(self, prompt: str) -> str:
        key = self._cache.key(self._inner.identity, prompt, self._inner.sampling.as_dict(), chunk_id="")
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        answer = self._inner.complete_batch([prompt])[0]
        if answer is None:
            raise RuntimeError(f"{self._inner.backend} engine returned no answer")
        self._cache.put_many([{"key": key, "chunk_id": "", "attempt": 0, "answer": answer}])
        return answer

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self._answer(prompt))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        text = self._answer(prompt)

        def gen() -> CompletionResponseGen:
            yield CompletionResponse(text=text, delta=text)

        return gen()
