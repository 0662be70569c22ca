"""What every question-generation backend shares: sampling settings and a batched LlamaIndex ``CustomLLM``.

A backend implements one method, :meth:`BatchLLM._generate`, that answers a whole list of prompts in ONE engine call.
The native generate engine uses :meth:`BatchLLM.complete_batch` with large batches and cleans the raw answers
itself; LlamaIndex (``generate_qa_embedding_pairs``, query engines) uses the ordinary ``complete``, a batch of one.
Prompts are plain user messages: each backend applies the model's chat template itself, with Qwen3's thinking mode
off.

By default the LLM answers with clean questions only, one per line: the model's text goes through the same
extraction and filters as the native engine (:class:`~offline_embft.generate.questions.QuestionCleaner`), so
LlamaIndex's
line splitting receives nothing but questions. ``raw=True`` returns the model's text untouched, for other uses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

from llama_index.core.base.llms.types import CompletionResponse, CompletionResponseGen, LLMMetadata
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_completion_callback

from offline_embft.core.errors import UserError
from offline_embft.generate.questions import FilterSettings, NoQuestionError, QuestionCleaner

logger = logging.getLogger(__name__)

# Passed to every chat template: Qwen3 then writes an empty <think></think> block itself and answers directly.
# Templates that do not know the variable ignore it.
CHAT_TEMPLATE_KWARGS: dict[str, Any] = {"enable_thinking": False}
# The reason key of a prompt longer than the engine's context (counted in the generate stage's stats).
PROMPT_TOO_LONG = "prompt_too_long"


class EngineDied(UserError):
    """The engine (or the server behind it) is gone mid-run: one line naming the cause.

    Every batch answered before it is in the answer cache; the generate stage says so, and a rerun asks only the rest.
    """


@dataclass(frozen=True)
class Refused:
    """What a backend returns for a prompt the engine refused on its own merits (it would refuse it again).

    ``reason`` starts with a short key (e.g. ``prompt_too_long``) the generate stage counts in its stats.
    """

    reason: str

    @property
    def key(self) -> str:
        return self.reason.split(":", 1)[0]


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
        """The sampling settings of a :class:`~offline_embft.core.config.GenerateConfig`."""
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


@dataclass(frozen=True)
class AnsweredBatch:
    """One engine call's answers as they come back: ``(key, answer or None)`` pairs, who answered, how long it took,
    and the prompts the engine refused on their own merits (e.g. longer than its context)."""

    answers: list[tuple[str, str | None]]
    replica: int = 0
    seconds: float = 0.0
    refused: dict[str, str] = field(default_factory=dict)  # key → why the engine refused that prompt itself


class BatchLLM(CustomLLM):
    """A LlamaIndex ``CustomLLM`` that also answers a list of prompts in one engine call.

    Subclasses implement :meth:`_generate`. ``complete``/``stream_complete``/``complete_batch`` return clean
    questions, one per line (see the module docstring), unless ``raw`` is set. ``complete`` raises
    :class:`~offline_embft.generate.questions.NoQuestionError` when an answer holds no usable question, which
    ``generate_qa_embedding_pairs`` catches and retries; the retry of a prompt is answered with the next seed.
    """

    model_name: str = "unknown"
    context_window: int = 4096
    num_output: int = 256
    raw: bool = Field(
        default=False,
        description="Return the model's text untouched instead of the clean questions it contains, one per line.",
    )

    # True for generators whose "questions" are pseudo-queries (sentences), not real questions (backend ict).
    pseudo_queries: ClassVar[bool] = False
    backend: ClassVar[str] = "base"
    # The backend's facts, which doctor, download, replica planning and Ray read instead of testing its name
    # (a backend is registered in offline_embft.generate.llm.registry under its ``backend`` name).
    needs_gpu: ClassVar[bool] = False  # its engine runs on CUDA GPUs only: doctor FAILs the GPU lines without one
    needs_local_weights: ClassVar[bool] = False  # it loads generate.model from Models/: download fetches it
    needs_base_url: ClassVar[bool] = False  # it talks to servers at generate.base_url instead
    # Several engines of it may run side by side (generate.data_parallel_size, generate.ray_address); when not,
    # ``spreads_work`` says how the backend spreads its work instead ("backend NAME <spreads_work>").
    runs_replicas: ClassVar[bool] = True
    spreads_work: ClassVar[str] = ""
    engine_package: ClassVar[str] = ""  # the package its engine imports beyond the base install (doctor checks it)
    extra: ClassVar[str] = ""  # the pip extra that installs that package: pip install 'offline-embft[EXTRA]'
    compiles_kernels: ClassVar[bool] = False  # its engine compiles kernels at run time (a C compiler, Python.h)

    _sampling: Sampling = PrivateAttr(default_factory=Sampling)
    _engine_calls: int = PrivateAttr(default=0)
    _fingerprint: str = PrivateAttr(default="")
    _cleaner: QuestionCleaner = PrivateAttr()
    _answer_cache: Any = PrivateAttr(default=None)
    _budget: Any = PrivateAttr(default=None)
    _last_refusals: dict[int, str] = PrivateAttr(default_factory=dict)

    def __init__(self, *, model_name: str, sampling: Sampling, fingerprint: str = "", **kwargs: Any) -> None:
        super().__init__(model_name=model_name, num_output=sampling.max_tokens, **kwargs)
        self._sampling = sampling
        self._fingerprint = fingerprint or model_name
        self._cleaner = QuestionCleaner(self.default_filter_settings())

    @classmethod
    def class_name(cls) -> str:
        return f"offline_embft_{cls.backend}"

    @classmethod
    def from_config(cls, cfg: Any, template: str) -> BatchLLM:
        """Build the backend from a :class:`~offline_embft.core.config.GenerateConfig` (``template``: the prompt
        template the prompts are rendered from).

        Raises:
            UserError: a setting the backend needs is missing or wrong, its engine cannot start.
        """
        raise NotImplementedError

    @classmethod
    def gpus_per_engine(cls, cfg: Any) -> int:
        """GPUs one engine of this backend occupies under ``cfg`` (0: it runs on CPU or elsewhere)."""
        return 0

    @classmethod
    def default_filter_settings(cls, **thresholds: Any) -> FilterSettings:
        """Filter settings for this kind of generator (pseudo-queries are statements copied from the chunk)."""
        return FilterSettings(**thresholds, require_question=not cls.pseudo_queries, check_copy=not cls.pseudo_queries)

    @property
    def sampling(self) -> Sampling:
        """Default sampling settings of this LLM."""
        return self._sampling

    @property
    def engine_calls(self) -> int:
        """How many times the engine was called (one per batch)."""
        return self._engine_calls

    @property
    def prompt_budget(self) -> Any:
        """The :class:`~offline_embft.generate.llm.prompt_budget.PromptBudget` of this engine (None: it cannot count
        tokens)."""
        return self._budget

    @property
    def last_refusals(self) -> dict[int, str]:
        """Prompts of the last ``complete_batch`` the engine refused on their own merits: index → reason."""
        return dict(self._last_refusals)

    @property
    def identity(self) -> str:
        """Which model answers: the backend and a fingerprint of the model (part of the answer-cache key)."""
        return f"{self.backend}:{self._fingerprint}"

    @property
    def cleaner(self) -> QuestionCleaner:
        """What turns answers into questions; its ``filter.dropped``, ``failures`` and records are the counts."""
        return self._cleaner

    @cleaner.setter
    def cleaner(self, cleaner: QuestionCleaner) -> None:
        self._cleaner = cleaner

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

    @contextmanager
    def question_run(self, cleaner: QuestionCleaner, cache: Any = None) -> Iterator[QuestionCleaner]:
        """Clean with ``cleaner`` (fresh counts for one run) and answer ``complete`` from ``cache`` while inside.

        ``cache`` is an :class:`~offline_embft.generate.answer_cache.AnswerCache`: every raw answer is saved as it
        comes and
        replayed on a rerun, so a LlamaIndex loop killed half-way resumes without asking the model again.
        """
        previous = (self._cleaner, self._answer_cache, self.raw)
        self._cleaner, self._answer_cache, self.raw = cleaner, cache, False
        try:
            yield cleaner
        finally:
            self._cleaner, self._answer_cache, self.raw = previous

    def complete_batch(
        self, prompts: Sequence[str], *, seed: int | None = None, raw: bool | None = None
    ) -> list[str | None]:
        """Answer every prompt in one engine call.

        Args:
            prompts: User messages (the backend applies the chat template).
            seed: Sampling seed for this call (None: the default); retries pass another one.
            raw: The model's text untouched (True) or its clean questions, one per line (False); None: ``self.raw``.

        Returns:
            One answer per prompt, in order; None where the engine failed for that prompt (then
            :attr:`last_refusals` says why when the engine refused that prompt itself, e.g. longer than its context)
            or, when cleaning, where the answer held no usable question (counted in ``self.cleaner``).
        """
        self._last_refusals = {}
        if not prompts:
            return []
        prompts = list(prompts)
        answers: list[str | None] = [None] * len(prompts)
        send = list(range(len(prompts)))
        if self._budget is not None:
            # Over-long prompts never reach the engine: there, one of them would fail the whole batch.
            counts = self._budget.count_many(prompts)
            limit = self._budget.limit
            for index, count in enumerate(counts):
                if count > limit:
                    self._last_refusals[index] = (
                        f"{PROMPT_TOO_LONG}: {count} tokens, over the {limit} that max_model_len "
                        f"{self._budget.max_model_len} leaves beside {self._sampling.max_tokens} for the answer"
                    )
            send = [index for index in send if index not in self._last_refusals]
        if send:
            self._engine_calls += 1
            results = self._generate([prompts[i] for i in send], self._sampling.with_seed(seed))
            if len(results) != len(send):
                raise RuntimeError(f"{self.backend} returned {len(results)} answers for {len(send)} prompts")
            for index, result in zip(send, results, strict=True):
                if isinstance(result, Refused):
                    self._last_refusals[index] = result.reason
                else:
                    answers[index] = result
        if self.raw if raw is None else raw:
            return answers
        return [self._clean(prompt, answer) for prompt, answer in zip(prompts, answers, strict=True)]

    def _clean(self, prompt: str, answer: str | None) -> str | None:
        if answer is None:
            self._cleaner.engine_error(prompt)
            return None
        questions = self._cleaner.clean(prompt, answer)
        return "\n".join(questions) if questions else None

    def answer_stream(
        self, items: Sequence[tuple[str, str]], *, seed: int | None, batch_size: int, raw: bool | None = None
    ) -> Iterator[AnsweredBatch]:
        """Answer ``(key, prompt)`` items in batches of ``batch_size``, yielding each batch as soon as it is done.

        The generate stage writes every yielded batch to the answer cache before asking for the next, so a crash
        loses at most the batches in flight. Engine replicas (:mod:`offline_embft.generate.scale`) override this to
        answer
        shards in parallel. ``raw`` as in :meth:`complete_batch`.
        """
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            began = time.perf_counter()
            outputs = self.complete_batch([prompt for _, prompt in batch], seed=seed, raw=raw)
            answers = [(key, out) for (key, _), out in zip(batch, outputs, strict=True)]
            refused = {batch[index][0]: reason for index, reason in self.last_refusals.items()}
            yield AnsweredBatch(answers, replica=0, seconds=time.perf_counter() - began, refused=refused)

    def _generate(self, prompts: list[str], sampling: Sampling) -> list[str | Refused | None]:
        """Answer every prompt in one engine call: a text, None (failed, worth a retry) or :class:`Refused`."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the engine (GPU memory, threads). The LLM is unusable afterwards."""

    def _raw_answer(self, prompt: str, seed: int | None) -> str:
        """The model's text for one prompt: from the attached answer cache, else from the engine (then cached)."""
        cache = self._answer_cache
        key = ""
        if cache is not None:
            key = cache.key(self.identity, prompt, self._sampling.with_seed(seed).as_dict(), chunk_id="")
            cached = cache.get(key)
            if cached is not None:
                return cached
        (answer,) = self.complete_batch([prompt], seed=seed, raw=True)
        if answer is None:
            self._cleaner.engine_error(prompt)
            # LlamaIndex's generate_qa_embedding_pairs retries on exceptions, so failing loudly is the useful thing.
            why = self._last_refusals.get(0)
            raise RuntimeError(f"{self.backend} engine returned no answer" + (f" ({why})" if why else ""))
        if cache is not None:
            cache.put_many([{"key": key, "chunk_id": "", "seed": seed, "model": self.identity, "answer": answer}])
        return answer

    def _complete_one(self, prompt: str) -> str:
        if self.raw:
            return self._raw_answer(prompt, None)
        # A prompt asked again after a failure (LlamaIndex's retry loop) is answered with the next seed, like the
        # native engine's retries: the same seed would give the same unusable answer.
        base = self._sampling.seed
        seed = None if base is None else base + self._cleaner.record(prompt).retry_offset
        answer = self._raw_answer(prompt, seed)
        questions = self._cleaner.clean(prompt, answer)
        if not questions:
            raise NoQuestionError(self._cleaner.failure_message(prompt, answer))
        return "\n".join(questions)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """The clean questions in the model's answer to ``prompt``, one per line (its raw text when ``raw``).

        Raises:
            NoQuestionError: the answer held no usable question (not when ``raw``).
            RuntimeError: the engine gave no answer (a server error after retries).
        """
        return CompletionResponse(text=self._complete_one(prompt))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """:meth:`complete` as one streamed piece (an answer is only known to be clean once it is whole)."""
        text = self._complete_one(prompt)

        def gen() -> CompletionResponseGen:
            yield CompletionResponse(text=text, delta=text)

        return gen()
