"""Hugging Face transformers: batched ``generate`` with left padding, on CPU or GPU, no vLLM needed.

Slower than vLLM on a GPU (no paged attention, no continuous batching) but it runs anywhere torch runs. Prompts of
similar length should share a batch (the generate stage sorts them) so that little compute goes to padding.

Sampling is seeded per prompt, not per batch, like vLLM's per-request seed: each prompt draws its tokens from its
own generator (seeded by the run's seed and the prompt), through the Gumbel-max trick on top of the usual
temperature/top-k/top-p/min-p warpers. An answer therefore does not depend on which other prompts share its batch,
so engine replicas (:mod:`offline_embft.generate.scale.replicas`) produce the same dataset as one engine.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from llama_index.core.bridge.pydantic import PrivateAttr

from offline_embft.core.errors import UserError
from offline_embft.generate.llm.base import CHAT_TEMPLATE_KWARGS, BatchLLM, Sampling
from offline_embft.generate.llm.presets import DEFAULT_MAX_MODEL_LEN, ResolvedModel, resolve_model
from offline_embft.generate.llm.prompt_budget import PromptBudget

logger = logging.getLogger(__name__)

DTYPES = ("auto", "bfloat16", "float16", "float32")


class TransformersLLM(BatchLLM):
    """A causal LM through ``AutoModelForCausalLM.generate``, one call per batch."""

    backend = "transformers"
    needs_local_weights = True

    @classmethod
    def from_config(cls, cfg: Any, template: str) -> TransformersLLM:
        return cls(
            resolve_model(cfg.model, cfg.models_dir),
            Sampling.from_config(cfg),
            device=cfg.device,
            dtype=cfg.dtype,
            max_model_len=cfg.max_model_len,
        )

    @classmethod
    def gpus_per_engine(cls, cfg: Any) -> int:
        return 0 if cfg.device == "cpu" else 1

    _model: Any = PrivateAttr(default=None)
    _tokenizer: Any = PrivateAttr(default=None)
    _device: str = PrivateAttr(default="cpu")
    _has_template: bool = PrivateAttr(default=True)

    def __init__(
        self,
        model: ResolvedModel,
        sampling: Sampling,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_model_len: int = 0,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if dtype not in DTYPES:
            raise UserError(f"generate.dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("generate.device is cuda but torch sees no GPU; use --set generate.device=cpu")
        super().__init__(model_name=model.name, sampling=sampling, fingerprint=model.fingerprint())
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(model.path))
            # bf16 matmuls are slow on most CPUs; fp32 is the safe default there.
            torch_dtype = getattr(torch, dtype) if dtype != "auto" else ("auto" if device != "cpu" else torch.float32)
            llm = AutoModelForCausalLM.from_pretrained(str(model.path), dtype=torch_dtype)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load the LLM in {model.path}: {str(exc).splitlines()[0]}") from None
        # Decoder-only models continue from the last position: pad on the left so every prompt ends there.
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._has_template = bool(getattr(tokenizer, "chat_template", None))
        if not self._has_template:
            logger.warning("%s has no chat template; prompts are sent as raw text (is it a base model?)", model.path)
        if sampling.presence_penalty:
            logger.warning("presence_penalty has no transformers equivalent; ignored by backend transformers")
        self._tokenizer = tokenizer
        self._model = llm.to(device).eval()
        self._device = device
        # The same token budget as vLLM's: past its context a model writes garbage (or runs out of GPU memory).
        context = max_model_len or getattr(llm.config, "max_position_embeddings", 0) or DEFAULT_MAX_MODEL_LEN
        self._budget = PromptBudget(tokenizer, context, sampling.max_tokens)

    def settings(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model_name, "device": self._device}

    def _render(self, prompt: str) -> str:
        if not self._has_template:
            return prompt
        return self._tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, **CHAT_TEMPLATE_KWARGS
        )

    def _generate(self, prompts: list[str], sampling: Sampling) -> list[str | None]:
        import torch

        texts = [self._render(prompt) for prompt in prompts]
        # The chat template already holds the special tokens; adding BOS again would shift the model's input.
        inputs = self._tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self._device)
        kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_tokens, "pad_token_id": self._tokenizer.pad_token_id}
        if sampling.temperature > 0 and sampling.seed is not None:
            # Greedy decoding over Gumbel-perturbed, warped logits = sampling, with one generator per prompt.
            kwargs.update(do_sample=False, logits_processor=per_prompt_sampler(sampling, prompts))
        elif sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
            if sampling.top_k > 0:
                kwargs["top_k"] = sampling.top_k
            if sampling.min_p > 0:
                kwargs["min_p"] = sampling.min_p
        else:
            kwargs["do_sample"] = False
        try:
            with torch.inference_mode():
                output = self._model.generate(**inputs, **kwargs)
        except torch.cuda.OutOfMemoryError:
            raise UserError(
                f"GPU out of memory generating {len(prompts)} answers at once; lower --batch-size "
                f"(e.g. {max(1, len(prompts) // 4)}) or use a smaller or quantized model"
            ) from None
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return self._tokenizer.batch_decode(new_tokens, skip_special_tokens=True)

    def close(self) -> None:
        self._model = None


def prompt_seed(seed: int, prompt: str) -> int:
    """The seed of one prompt's generator: the run's seed and the prompt, nothing about its batch."""
    digest = hashlib.sha256(f"{seed}\x1f{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def per_prompt_sampler(sampling: Sampling, prompts: list[str]) -> Any:
    """Logits processors that make greedy decoding sample each prompt from its own seeded generator.

    transformers' warpers (the same ones ``do_sample=True`` would use, in the same order) shape the distribution;
    the last processor adds Gumbel noise drawn from the prompt's own generator, and the argmax of ``logits + Gumbel``
    is a sample from ``softmax(logits)``.
    """
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    generators = [torch.Generator().manual_seed(prompt_seed(sampling.seed or 0, prompt)) for prompt in prompts]

    class GumbelPerPrompt(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            noise = torch.stack([torch.rand(scores.shape[-1], generator=g, dtype=torch.float64) for g in generators])
            gumbel = -torch.log(-torch.log(noise.clamp(1e-20, 1.0 - 1e-16)))
            return scores + gumbel.to(device=scores.device, dtype=scores.dtype)

    processors = [TemperatureLogitsWarper(sampling.temperature)]
    if sampling.top_k > 0:
        processors.append(TopKLogitsWarper(top_k=sampling.top_k))
    if sampling.top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p=sampling.top_p))
    if sampling.min_p > 0:
        processors.append(MinPLogitsWarper(min_p=sampling.min_p))
    return LogitsProcessorList([*processors, GumbelPerPrompt()])
