"""Question-generation backends, each a LlamaIndex ``CustomLLM`` with a batched ``complete_batch``.

``create_llm(backend=..., model=..., ...)`` (or ``create_llm(cfg)``) builds one: the backend class registered under
that name (:mod:`offline_embft.generate.llm.registry`, one :func:`register_backend` line each, below) builds itself
from the config and states its facts (needs a GPU, needs local weights, runs replicas). Heavy libraries (vLLM,
transformers, openai) are imported only by the backend that is built. Every backend answers ``complete`` with
clean questions, one per line (``raw=True``: the model's text)::

    from offline_embft.generate.llm import create_llm
    llm = create_llm(backend="openai", model="Qwen3-8B", base_url="http://gpu-server:8000/v1")
    dataset = generate_qa_embedding_pairs(nodes=nodes, llm=llm, num_questions_per_chunk=2)

=============  =====================================================================================
vllm           one ``vllm.LLM`` per run, each batch in one ``chat`` call (GPU servers; the default)
transformers   batched ``generate`` with left padding (CPU or GPU, no vLLM)
openai         OpenAI-compatible servers in your network (``vllm serve`` elsewhere), bounded concurrency each
ict            inverse-cloze pseudo-queries, no LLM at all (CPU demo; weaker than a real LLM)
=============  =====================================================================================
"""

from __future__ import annotations

import dataclasses
from typing import Any

from offline_embft.core.config import GenerateConfig
from offline_embft.core.errors import UserError
from offline_embft.generate.llm.base import PROMPT_TOO_LONG, AnsweredBatch, BatchLLM, Refused, Sampling
from offline_embft.generate.llm.ict_backend import IctLLM
from offline_embft.generate.llm.openai_backend import OpenAILLM
from offline_embft.generate.llm.presets import PRESETS, Preset, ResolvedModel, find_preset, resolve_model
from offline_embft.generate.llm.registry import BACKENDS, backend_class, register_backend
from offline_embft.generate.llm.transformers_backend import TransformersLLM
from offline_embft.generate.llm.vllm_backend import VllmLLM
from offline_embft.generate.prompt import builtin_template, load_template
from offline_embft.generate.questions import NoQuestionError, QuestionCleaner

# The backends, one line each (the first is the config's default); each class states its facts and builds itself.
register_backend(VllmLLM)
register_backend(TransformersLLM)
register_backend(OpenAILLM)
register_backend(IctLLM)

__all__ = [
    "BACKENDS",
    "PRESETS",
    "PROMPT_TOO_LONG",
    "AnsweredBatch",
    "BatchLLM",
    "NoQuestionError",
    "Preset",
    "QuestionCleaner",
    "Refused",
    "ResolvedModel",
    "Sampling",
    "backend_class",
    "create_llm",
    "find_preset",
    "prepare",
    "register_backend",
    "resolve_model",
]


def create_llm(
    cfg: GenerateConfig | None = None, *, template: str | None = None, raw: bool = False, **settings: Any
) -> BatchLLM:
    """Build a question-generation LLM: a LlamaIndex ``CustomLLM`` for one backend and model.

    Example (offline: a ``vllm serve`` in your own network)::

        llm = create_llm(backend="openai", model="Qwen3-8B", base_url="http://gpu-server:8000/v1")
        llm = create_llm(backend="vllm", model="Qwen3-8B", questions_per_chunk=2)   # Models/Qwen/Qwen3-8B
        print(llm.complete(prompt).text)        # the clean questions, one per line

    Args:
        cfg: A generate config to start from (default: :class:`~offline_embft.core.config.GenerateConfig`'s defaults).
        template: The prompt template (``{context}``, ``{num_questions}``) the prompts are rendered from: the LLM
            reads the chunk and the number of questions back from such prompts. Default: ``cfg.prompt_file`` or
            the built-in Chinese prompt. LlamaIndex's default prompt is recognised too.
        raw: Return the model's text untouched instead of clean questions.
        **settings: Any :class:`~offline_embft.core.config.GenerateConfig` field (``backend``, ``model``, ``base_url``,
            ``temperature``, ``max_new_tokens``, ``min_question_chars``, ...), overriding ``cfg``.

    Raises:
        UserError: an unknown setting, the model is missing, vLLM is not installed, ``base_url`` is missing or
            unreachable, ...
    """
    cfg = _with_settings(cfg or GenerateConfig(), settings)
    template = template if template is not None else load_template(cfg.prompt_file)
    return prepare(backend_class(cfg.backend).from_config(cfg, template), cfg, template, raw=raw)


def prepare(llm: BatchLLM, cfg: GenerateConfig, template: str, *, raw: bool = False) -> BatchLLM:
    """Set how ``llm`` answers: its raw text, or the clean questions in it under ``cfg``'s question filters.

    Used by :func:`create_llm` and for engines that front several backends (:mod:`offline_embft.generate.scale`).
    """
    llm.raw = raw
    llm.cleaner = QuestionCleaner(
        llm.default_filter_settings(
            min_chars=cfg.min_question_chars, max_chars=cfg.max_question_chars, near_copy_ratio=cfg.near_copy_ratio
        ),
        templates=[template, builtin_template()],
    )
    return llm


def _with_settings(cfg: GenerateConfig, settings: dict[str, Any]) -> GenerateConfig:
    known = {f.name for f in dataclasses.fields(GenerateConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise UserError(
            f"create_llm got unknown setting(s) {', '.join(unknown)}; use GenerateConfig fields such as "
            "backend, model, base_url, temperature, max_new_tokens (see `offline-embft config --help`)"
        )
    return dataclasses.replace(cfg, **settings) if settings else cfg
