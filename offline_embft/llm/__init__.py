"""Question-generation backends, each a LlamaIndex ``CustomLLM`` with a batched ``complete_batch``.

``create_llm(cfg)`` builds the one the config names; heavy libraries (vLLM, transformers, openai) are imported only
by the backend that needs them.

=============  =====================================================================================
vllm           one ``vllm.LLM`` per run, each batch in one ``chat`` call (GPU servers; the default)
transformers   batched ``generate`` with left padding (CPU or GPU, no vLLM)
openai         an OpenAI-compatible server in your network (``vllm serve`` elsewhere), bounded concurrency
ict            inverse-cloze pseudo-queries, no LLM at all (CPU demo; weaker than a real LLM)
=============  =====================================================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from offline_embft.errors import UserError
from offline_embft.llm.base import BatchLLM, CachedLLM, Sampling
from offline_embft.llm.presets import PRESETS, Preset, ResolvedModel, find_preset, resolve_model

if TYPE_CHECKING:
    from offline_embft.config import GenerateConfig

__all__ = [
    "PRESETS",
    "BatchLLM",
    "CachedLLM",
    "Preset",
    "ResolvedModel",
    "Sampling",
    "create_llm",
    "find_preset",
    "resolve_model",
]


def create_llm(cfg: GenerateConfig, *, template: str = "{context}") -> BatchLLM:
    """Build the backend ``cfg.backend`` names, configured from ``cfg``.

    Args:
        cfg: The generate config (backend, model, sampling, engine settings).
        template: The prompt template (the ict backend finds each chunk inside prompts rendered from it).

    Raises:
        UserError: the model is missing, vLLM is not installed, ``--base-url`` is missing or unreachable, ...
    """
    sampling = Sampling.from_config(cfg)
    if cfg.backend == "ict":
        from offline_embft.llm.ict_backend import IctLLM

        return IctLLM(
            template,
            sampling,
            questions_per_chunk=cfg.questions_per_chunk,
            min_chars=cfg.min_question_chars,
            max_chars=cfg.max_question_chars,
        )
    if cfg.backend == "openai":
        from offline_embft.llm.openai_backend import OpenAILLM

        if not cfg.base_url:
            raise UserError("backend openai needs --base-url, e.g. http://gpu-server:8000/v1 where `vllm serve` runs")
        return OpenAILLM(
            cfg.base_url,
            cfg.model,
            sampling,
            api_key=cfg.api_key,
            concurrency=cfg.concurrency,
            timeout=cfg.timeout,
            request_retries=cfg.request_retries,
        )
    if cfg.backend == "vllm":
        from offline_embft.llm.vllm_backend import VllmLLM, import_vllm

        import_vllm()  # before the model lookup: on a machine without vLLM, that is the problem to report
        return VllmLLM(
            resolve_model(cfg.model, cfg.models_dir),
            sampling,
            tensor_parallel_size=cfg.tensor_parallel_size,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            max_model_len=cfg.max_model_len,
            dtype=cfg.dtype,
            quantization=cfg.quantization,
            seed=cfg.seed,
        )
    if cfg.backend == "transformers":
        from offline_embft.llm.transformers_backend import TransformersLLM

        return TransformersLLM(resolve_model(cfg.model, cfg.models_dir), sampling, device=cfg.device, dtype=cfg.dtype)
    raise UserError(f"unknown backend {cfg.backend!r}; use vllm, transformers, openai or ict")
