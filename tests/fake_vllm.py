"""A fake ``vllm`` that plays a GPU server's vLLM where the real engine cannot go here: GPU start-up failures.

Everything vLLM does on any machine runs against vLLM itself now (its CPU build, tests/test_vllm_real.py): one chat
call per batch, thinking off, seeds, the over-long prompt's ``VLLMValidationError``, the split, the stage, replicas,
the server. What stays here needs a GPU, or a GPU server's engine arguments (presets, tensor parallelism):

- GPU memory at start-up (tests/test_gpu_servers.py): the engine core child logs the root cause ("EngineCore failed
  to start.", vllm 0.32 v1/engine/core.py:1510) and the parent raises RuntimeError("Engine core initialization
  failed. See root cause above. ...", v1/engine/utils.py:1432); the causes copied are "No available memory for the
  cache blocks. ..." (v1/core/kv_cache_utils.py:1011), "... KV cache is needed, which is larger than the available
  KV cache memory ..." (v1/core/kv_cache_utils.py:1033) and torch's ``OutOfMemoryError`` while loading weights.
- Quantized checkpoints (AWQ/FP8 kernels are GPU-only): the check runs in the parent inside pydantic's ModelConfig,
  so a mismatch arrives as ``pydantic.ValidationError`` holding "Quantization method specified in the model config
  (...) does not match the quantization method specified in the `quantization` argument (...)"
  (config/model.py:1446); an awq checkpoint with no setting resolves to ``awq_marlin`` (quantization/auto_awq.py).
- scripts/gpu_smoke.py's vLLM rows on a "GPU" (its CPU-build rows run for real: docs/benchmarks.md), for which
  ``LLM.chat`` renders the chat template and refuses a prompt of ``max_model_len`` tokens or more for the whole call,
  as vLLM's input processor does (the real engine's refusal is checked in tests/test_vllm_real.py).

The exception classes mirror ``vllm.exceptions`` (``VLLMValidationError(VLLMClientError(VLLMError(Exception)))``,
not a ValueError) so that code under test sees the module and names it would see on a GPU server.

The fake "GPU" has :attr:`FakeLLM.gpu_bytes` of memory; weights cost their size on disk times
:attr:`FakeLLM.weight_scale` (so a tiny test model can play an 8B one), the KV cache costs what the model's config
says per token. Answers play Qwen3: thinking unless the template closed an empty think block, else one question.
"""

from __future__ import annotations

import json
import math
import os
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

# ---------------------------------------------------------------------------------------------------------------
# vllm.exceptions (0.33.0, verbatim in behaviour)


class VLLMError(Exception):
    """Base class for all vLLM-specific errors."""


class VLLMClientError(VLLMError):
    """Base class for errors caused by the client request (4xx)."""


class VLLMValidationError(VLLMClientError):
    def __init__(self, message: str, *, parameter: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.value = value

    def __str__(self) -> str:
        base = super().__str__()
        extras = []
        if self.parameter is not None:
            extras.append(f"parameter={self.parameter}")
        if self.value is not None:
            extras.append(f"value={self.value}")
        return f"{base} ({', '.join(extras)})" if extras else base


for _cls in (VLLMError, VLLMClientError, VLLMValidationError):
    _cls.__module__ = "vllm.exceptions"


# ---------------------------------------------------------------------------------------------------------------
# vllm.SamplingParams and outputs


@dataclass
class SamplingParams:
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: Any = None
    max_tokens: int | None = 16  # vLLM's default: the trap the backend must avoid
    min_tokens: int = 0

    def __post_init__(self) -> None:
        self._verify_args()

    def _verify_args(self) -> None:  # sampling_params.py:636-693, the checks our config can reach
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise VLLMValidationError(f"presence_penalty must be in [-2, 2], got {self.presence_penalty}.")
        if not math.isfinite(self.temperature):
            raise VLLMValidationError(
                f"temperature must be a finite number, got {self.temperature}.",
                parameter="temperature",
                value=self.temperature,
            )
        if self.temperature < 0.0:
            raise VLLMValidationError(
                f"temperature must be non-negative, got {self.temperature}.",
                parameter="temperature",
                value=self.temperature,
            )
        if self.temperature > 2.0:
            raise VLLMValidationError(
                f"temperature must be in [0, 2], got {self.temperature}.",
                parameter="temperature",
                value=self.temperature,
            )
        if not 0.0 < self.top_p <= 1.0:
            raise VLLMValidationError(
                f"top_p must be in (0, 1], got {self.top_p}.", parameter="top_p", value=self.top_p
            )
        if self.top_k < -1:
            raise VLLMValidationError(f"top_k must be 0 (disable), or at least 1, got {self.top_k}.")
        if not 0.0 <= self.min_p <= 1.0:
            raise VLLMValidationError(f"min_p must be in [0, 1], got {self.min_p}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise VLLMValidationError(
                f"max_tokens must be at least 1, got {self.max_tokens}.", parameter="max_tokens", value=self.max_tokens
            )


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: Any = None
    finish_reason: str | None = "stop"
    stop_reason: Any = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool = True
    metrics: Any = None


# ---------------------------------------------------------------------------------------------------------------
# The parent's config check: a pydantic dataclass, as vLLM's ModelConfig is


def _model_config_class() -> type:
    from pydantic import ConfigDict
    from pydantic.dataclasses import dataclass as pydantic_dataclass

    @pydantic_dataclass(config=ConfigDict(arbitrary_types_allowed=True, extra="forbid"))
    class ModelConfig:
        model: str
        quantization: str | None = None

        def __post_init__(self) -> None:
            config = json.loads((Path(self.model) / "config.json").read_text(encoding="utf-8"))
            quant_cfg = config.get("quantization_config")
            if quant_cfg is None:
                return
            quant_method = quant_cfg["quant_method"]
            # auto_awq.py:263-286: an awq checkpoint with no setting (or awq/awq_marlin/marlin) runs the Marlin path.
            if quant_method == "awq" and self.quantization in (None, "awq", "awq_marlin", "auto_awq", "marlin"):
                quant_method = self.quantization = "awq_marlin"
            if self.quantization is None:
                self.quantization = quant_method
            elif self.quantization != quant_method:
                raise ValueError(
                    "Quantization method specified in the model config "
                    f"({quant_method}) does not match the quantization "
                    f"method specified in the `quantization` argument "
                    f"({self.quantization})."
                )

    ModelConfig.__name__ = ModelConfig.__qualname__ = "ModelConfig"
    return ModelConfig


def _engine_core_fails(root_cause: str) -> RuntimeError:
    """What the parent sees when the engine core child dies: the cause in the log (stdout), a RuntimeError here."""
    log = (
        "ERROR [core.py:1584] EngineCore failed to start.\n"
        "Traceback (most recent call last):\n"
        '  File "vllm/v1/engine/core.py", line 1560, in run_engine_core\n'
        f"{root_cause}\n"
    )
    sys.stdout.flush()
    os.write(1, log.encode())  # the child's stdout is this process's file descriptor 1
    return RuntimeError(
        "Engine core initialization failed. See root cause above. Failed core proc(s): {'EngineCore_DP0': 1}"
    )


class FakeLLM:
    """``vllm.LLM`` with a tokenizer, a chat template and a GPU of :attr:`gpu_bytes` bytes."""

    instances: ClassVar[list[FakeLLM]] = []
    gpu_bytes: ClassVar[int] = 80 * 1024**3
    weight_scale: ClassVar[float] = 1.0
    activation_bytes: ClassVar[int] = 0

    def __init__(
        self,
        model: str,
        *,
        tokenizer: str | None = None,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        quantization: str | None = None,
        seed: int | None = None,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        **kwargs: Any,
    ) -> None:
        from transformers import AutoTokenizer

        self.kwargs = dict(
            model=model,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            quantization=quantization,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            **kwargs,
        )
        self.model_config = _model_config_class()(model=model, quantization=quantization)
        config = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
        self.max_model_len = max_model_len or config.get("max_position_embeddings", 4096)
        self._check_memory(Path(model), config, gpu_memory_utilization, tensor_parallel_size)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.chat_calls: list[dict[str, Any]] = []
        self.generated = 0
        FakeLLM.instances.append(self)

    def _check_memory(self, path: Path, config: dict[str, Any], utilization: float, tp: int) -> None:
        weights = sum(p.stat().st_size for p in path.glob("*.safetensors")) * self.weight_scale / tp
        if weights > self.gpu_bytes:
            raise _engine_core_fails(
                f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {weights / 1024**3:.2f} GiB. GPU 0 "
                f"has a total capacity of {self.gpu_bytes / 1024**3:.2f} GiB"
            )
        available = self.gpu_bytes * utilization - weights - self.activation_bytes
        if available <= 0:
            raise _engine_core_fails(
                "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when "
                "initializing the engine (this flag also controls CPU memory reservation on the CPU backend, despite "
                "its name). See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."
            )
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        per_token = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * 2 * self.weight_scale
        needed = per_token * self.max_model_len / tp
        if needed > available:
            raise _engine_core_fails(
                f"ValueError: To serve at least one request with the model's max seq len ({self.max_model_len}), "
                f"({needed / 1024**3:.2f} GiB KV cache is needed, which is larger than the available KV cache memory "
                f"({available / 1024**3:.2f} GiB). Try increasing `gpu_memory_utilization` (which also controls CPU "
                "memory on the CPU backend) or decreasing `max_model_len` when initializing the engine."
            )

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def chat(
        self,
        messages,
        sampling_params=None,
        use_tqdm=True,
        lora_request=None,
        chat_template=None,
        chat_template_content_format="auto",
        add_generation_prompt=True,
        continue_final_message=False,
        tools=None,
        chat_template_kwargs=None,
        tokenization_kwargs=None,
        mm_processor_kwargs=None,
    ) -> list[RequestOutput]:
        conversations = messages if messages and isinstance(messages[0], list) else [messages]
        params = sampling_params or SamplingParams()
        self.chat_calls.append({"n": len(conversations), "params": params, "kwargs": chat_template_kwargs})
        requests = []
        for conversation in conversations:  # render and add, one request at a time (offline.py:548-564)
            prompt = self.tokenizer.apply_chat_template(
                conversation,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                **(chat_template_kwargs or {}),
            )
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            self._validate_prompt_length(len(ids))  # raises: the requests added so far are aborted
            requests.append((prompt, ids, conversation[-1]["content"]))
        outputs = []
        for number, (prompt, ids, user) in enumerate(requests):
            text = qwen3_answer(prompt, user)
            request_params = params[number] if isinstance(params, list) else params  # one per request, or shared
            room = min(request_params.max_tokens or 16, self.max_model_len - len(ids))
            cut = text[:room]  # one character per token, as with the character-level tiny Qwen
            finish = "length" if len(cut) < len(text) else "stop"
            outputs.append(
                RequestOutput(str(number), prompt, ids, None, [CompletionOutput(0, cut, [], None, None, finish)])
            )
        self.generated += len(outputs)
        return outputs

    def _validate_prompt_length(self, prompt_len: int) -> None:  # input_processor.py:565-601, text-only model
        max_prompt_len = self.max_model_len
        if prompt_len == 0:
            raise VLLMValidationError("The decoder prompt cannot be empty")
        if prompt_len > max_prompt_len:
            raise VLLMValidationError(
                f"The decoder prompt (length {prompt_len}) is longer than the maximum model length of "
                f"{max_prompt_len}. Make sure that `max_model_len` is no smaller than the number of text tokens."
            )
        if prompt_len == max_prompt_len:
            raise VLLMValidationError(
                f"The decoder prompt (length {prompt_len}) plus the number of requested output tokens (at least 1) is "
                f"longer than the maximum model length of {max_prompt_len}. Make sure that `max_model_len` is no "
                "smaller than the number of text tokens (prompt + requested output tokens)."
            )


def chunk_of(prompt: str) -> str:
    """The chunk inside a prompt of the built-in template (between its dashed lines)."""
    return prompt.split("---------------------")[1].strip() if "-----" in prompt else prompt


def qwen3_answer(rendered: str, user_message: str) -> str:
    question = f"{chunk_of(user_message)[:6]}的相关规定是什么？"
    if rendered.endswith("<think>\n\n</think>\n\n"):
        return question
    return "<think>\n好的，用户希望我根据资料提出问题。我先仔细阅读这段资料，找出其中的关键概念" + "。" * 300


@dataclass
class FakeVllm:
    """The installed fake: ``module`` is ``sys.modules["vllm"]``; ``LLM`` its engine class."""

    module: types.ModuleType
    LLM: type[FakeLLM] = FakeLLM
    extra: dict[str, Any] = field(default_factory=dict)


def install(monkeypatch: Any) -> FakeVllm:
    """Put the fake ``vllm`` (and ``vllm.exceptions``) into ``sys.modules`` for one test."""
    module = types.ModuleType("vllm")
    exceptions = types.ModuleType("vllm.exceptions")
    for cls in (VLLMError, VLLMClientError, VLLMValidationError):
        setattr(exceptions, cls.__name__, cls)
    module.exceptions = exceptions
    module.LLM = FakeLLM
    module.SamplingParams = SamplingParams
    module.__version__ = "0.33.0"
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.exceptions", exceptions)
    FakeLLM.instances.clear()
    monkeypatch.setattr(FakeLLM, "gpu_bytes", FakeLLM.gpu_bytes)
    monkeypatch.setattr(FakeLLM, "weight_scale", FakeLLM.weight_scale)
    monkeypatch.setattr(FakeLLM, "activation_bytes", FakeLLM.activation_bytes)
    return FakeVllm(module)
