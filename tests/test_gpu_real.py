"""The assumptions tests/fake_vllm.py makes, checked against the real engine: runs only where there is a CUDA GPU and
vLLM (skipped elsewhere, including CI). ``scripts/gpu_smoke.py`` runs the same steps with a table for operators.

If one of these fails on a GPU server, the fake is wrong about vLLM: fix the fake first, then the code.
"""

from __future__ import annotations

import importlib.util

import pytest
from tiny_qwen import build_tiny_qwen

pytestmark = pytest.mark.gpu


def _gpu_and_vllm() -> bool:
    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


requires_gpu = pytest.mark.skipif(not _gpu_and_vllm(), reason="needs a CUDA GPU and vLLM")


@requires_gpu
def test_real_vllm_refuses_an_over_long_prompt_the_way_the_fake_does(tmp_path):
    import vllm

    from offline_embft.generate.llm.base import CHAT_TEMPLATE_KWARGS
    from offline_embft.generate.llm.prompt_budget import PromptBudget, is_too_long_error

    model = build_tiny_qwen(tmp_path / "Qwen3-0.6B", ["公司法"])
    engine = vllm.LLM(str(model), max_model_len=256, gpu_memory_utilization=0.3, enforce_eager=True)
    budget = PromptBudget(engine.get_tokenizer(), 256, 1)
    overhead = budget.count("")
    short = [{"role": "user", "content": "公司"}]
    params = vllm.SamplingParams(max_tokens=4)
    kwargs = {"chat_template_kwargs": dict(CHAT_TEMPLATE_KWARGS)}
    engine.chat([[{"role": "user", "content": "公" * (255 - overhead)}]], params, **kwargs)  # 255 < 256: accepted
    with pytest.raises(Exception) as info:  # the class is the point: asserted below
        engine.chat([short, [{"role": "user", "content": "公" * (300 - overhead)}]], params, **kwargs)
    assert type(info.value).__name__ == "VLLMValidationError" and is_too_long_error(info.value)
    assert "(length 300) is longer than the maximum model length of 256" in str(info.value)


@requires_gpu
def test_real_vllm_smoke_steps(tmp_path):
    """gpu_smoke's vLLM steps: 64 chunks with one shortened, and vLLM's own refusal costing one prompt only."""
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "gpu_smoke_real", Path(__file__).parents[1] / "scripts" / "gpu_smoke.py"
    )
    smoke = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = smoke
    spec.loader.exec_module(smoke)
    model = build_tiny_qwen(tmp_path / "Qwen3-0.6B", smoke.statute_chunks())
    first = smoke.timed(smoke.Row("generate vllm"), lambda row: setattr(row, "llm", smoke.step_vllm(row, model)))
    assert first.result == "pass", first.detail
    second = smoke.timed(smoke.Row("vllm refuses alone"), lambda row: smoke.step_vllm_refuses_alone(row, first.llm))
    assert second.result == "pass", second.detail
