"""vLLM: the fast path on GPU servers. One ``vllm.LLM`` per run, every batch of prompts in ONE ``chat`` call.

vLLM is imported only when this backend is built: it is a GPU-server dependency (``pip install 'offline-embft[vllm]'``)
and pins its own torch/CUDA build, so CPU machines and CI never install it.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

from llama_index.core.bridge.pydantic import PrivateAttr

from offline_embft.errors import UserError
from offline_embft.llm.base import CHAT_TEMPLATE_KWARGS, BatchLLM, Sampling
from offline_embft.llm.presets import DEFAULT_GPU_MEMORY, DEFAULT_MAX_MODEL_LEN, ResolvedModel

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "backend vllm needs vLLM, which is not installed in this environment; on the GPU server run "
    "`pip install 'offline-embft[vllm]'` (or use --backend transformers, or --backend openai against a `vllm serve`)"
)


def import_vllm() -> Any:
    """Import vLLM or fail with one line saying how to install it."""
    try:
        import vllm
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return vllm


def _visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # a broken CUDA setup is vLLM's to report, with its own message
        return 0


class VllmLLM(BatchLLM):
    """Qwen3 (or any chat model) through ``vllm.LLM.chat`` with thinking disabled and max_tokens set."""

    backend = "vllm"

    _engine: Any = PrivateAttr(default=None)
    _vllm: Any = PrivateAttr(default=None)
    _engine_args: dict[str, Any] = PrivateAttr(default_factory=dict)

    def __init__(
        self,
        model: ResolvedModel,
        sampling: Sampling,
        *,
        tensor_parallel_size: int = 0,
        gpu_memory_utilization: float = 0.0,
        max_model_len: int = 0,
        dtype: str = "auto",
        quantization: str = "",
        seed: int = 42,
    ) -> None:
        vllm = import_vllm()
        preset = model.preset
        tp = tensor_parallel_size or (preset.tensor_parallel_size if preset else 1)
        gpus = _visible_gpus()
        if gpus and tp > gpus:
            logger.warning("tensor_parallel_size %d > %d visible GPUs; using %d", tp, gpus, gpus)
            tp = gpus
        max_len = max_model_len or (preset.max_model_len if preset else DEFAULT_MAX_MODEL_LEN)
        super().__init__(
            model_name=model.name, sampling=sampling, fingerprint=model.fingerprint(), context_window=max_len
        )
        self._vllm = vllm
        self._engine_args = {
            "model": str(model.path),
            "tensor_parallel_size": tp,
            "gpu_memory_utilization": gpu_memory_utilization
            or (preset.gpu_memory_utilization if preset else DEFAULT_GPU_MEMORY),
            "max_model_len": max_len,
            "dtype": dtype,
            "quantization": quantization or (preset.quantization if preset else "") or None,
            "seed": seed,
        }
        logger.info("starting vLLM: %s", self._engine_args)
        self._engine = vllm.LLM(**self._engine_args)

    def settings(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model_name, **self._engine_args}

    def _generate(self, prompts: list[str], sampling: Sampling) -> list[str | None]:
        params = self._vllm.SamplingParams(
            n=1,
            max_tokens=sampling.max_tokens,  # vLLM's default is 16 tokens: half a question
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else -1,
            min_p=sampling.min_p,
            presence_penalty=sampling.presence_penalty,
            seed=sampling.seed,
        )
        conversations = [[{"role": "user", "content": prompt}] for prompt in prompts]
        outputs = self._engine.chat(
            conversations, sampling_params=params, use_tqdm=False, chat_template_kwargs=dict(CHAT_TEMPLATE_KWARGS)
        )
        return [output.outputs[0].text if output.outputs else "" for output in outputs]

    def close(self) -> None:
        self._engine = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
