"""Qwen3 presets: swapping the question writer is one setting (``--model Qwen3-4B``), with GPU defaults that fit.

A preset names a ModelScope id (what ``offline-embft download`` fetches into ``Models/``) and the vLLM settings
that suit it. Any local model directory works as well: it gets the defaults of the preset its folder is named after,
or generic ones. Sizes are the checkpoint sizes on disk; ``min_gpu_gb`` is the smallest card (per GPU, at the
preset's tensor parallel size) on which vLLM runs the model with room for a useful KV cache at ``max_model_len`` 4096.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from offline_embft.core.errors import UserError
from offline_embft.core.model_files import locate

logger = logging.getLogger(__name__)

# Question prompts are a chunk (~300-500 tokens) plus ~150 tokens of instructions plus the answer: 4096 leaves ample
# room, and a short context lets vLLM batch far more sequences than the model's native 32k/40k would.
DEFAULT_MAX_MODEL_LEN = 4096
DEFAULT_GPU_MEMORY = 0.90


@dataclass(frozen=True)
class Preset:
    """One Qwen3 checkpoint and the vLLM settings that suit it."""

    name: str
    modelscope_id: str
    size_gb: float
    min_gpu_gb: int
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY
    max_model_len: int = DEFAULT_MAX_MODEL_LEN
    quantization: str = ""

    @property
    def note(self) -> str:
        if self.quantization == "fp8":
            return "FP8: native on Ada/Hopper (L4, L40S, 4090, H100); weight-only on Ampere"
        if self.quantization == "awq":
            return "AWQ 4-bit: any CUDA GPU from Turing on; slightly weaker than bf16"
        return "bf16"


def _preset(name: str, size_gb: float, min_gpu_gb: int, tp: int = 1, quantization: str = "") -> Preset:
    return Preset(
        name=name,
        modelscope_id=f"Qwen/{name}",
        size_gb=size_gb,
        min_gpu_gb=min_gpu_gb,
        tensor_parallel_size=tp,
        quantization=quantization,
    )


PRESETS: dict[str, Preset] = {
    p.name.lower(): p
    for p in (
        _preset("Qwen3-0.6B", 1.5, 6),
        _preset("Qwen3-0.6B-FP8", 1.0, 6, quantization="fp8"),
        _preset("Qwen3-1.7B", 4.1, 8),
        _preset("Qwen3-1.7B-FP8", 2.3, 8, quantization="fp8"),
        _preset("Qwen3-4B", 8.1, 16),
        _preset("Qwen3-4B-FP8", 4.5, 12, quantization="fp8"),
        _preset("Qwen3-4B-AWQ", 2.7, 8, quantization="awq"),
        _preset("Qwen3-8B", 16.4, 24),
        _preset("Qwen3-8B-FP8", 8.9, 16, quantization="fp8"),
        _preset("Qwen3-8B-AWQ", 5.9, 12, quantization="awq"),
        _preset("Qwen3-14B", 29.5, 40),
        _preset("Qwen3-14B-FP8", 16.0, 24, quantization="fp8"),
        _preset("Qwen3-14B-AWQ", 9.9, 16, quantization="awq"),
        # 65 GB of bf16 weights leave almost no KV cache on one 80 GB card: split it over two (48 GB each is enough).
        _preset("Qwen3-32B", 65.5, 48, tp=2),
        _preset("Qwen3-32B-FP8", 34.0, 48, quantization="fp8"),
        _preset("Qwen3-32B-AWQ", 19.4, 32, quantization="awq"),
    )
}


def find_preset(ref: str) -> Preset | None:
    """The preset named by ``ref``: ``Qwen3-8B``, ``qwen3-8b``, ``Qwen/Qwen3-8B`` or a path ending in one."""
    if not ref:
        return None
    name = Path(ref.rstrip("/\\")).name.lower()
    return PRESETS.get(name)


@dataclass(frozen=True)
class ResolvedModel:
    """A local model directory and the preset that gives its defaults (None for a model no preset knows)."""

    path: Path
    preset: Preset | None

    @property
    def name(self) -> str:
        return self.preset.name if self.preset else self.path.name

    def fingerprint(self) -> str:
        """Folder name plus a hash of config.json: stable when Models/ moves, different for another checkpoint."""
        config = self.path / "config.json"
        digest = hashlib.sha1(config.read_bytes()).hexdigest()[:12] if config.is_file() else "noconfig"
        return f"{self.path.name}@{digest}"


def resolve_model(ref: str, models_dir: str | Path = "") -> ResolvedModel:
    """Find the local directory of an LLM given as a preset name, a hub id or a path.

    The lookup is :func:`offline_embft.core.model_files.locate`, the same one ``doctor`` and ``download`` use: a path,
    ``Models/``, then the ModelScope and Hugging Face caches; a preset name (``Qwen3-8B``) is looked up under its
    hub id (``Qwen/Qwen3-8B``) too.

    Args:
        ref: A Qwen3 preset name, a hub id (``Qwen/Qwen3-8B``) or a model directory.
        models_dir: Where downloaded models live (default ``Models``).

    Returns:
        The model directory and the preset that gives its defaults.

    Raises:
        UserError: nothing was given, the directory does not exist, or it is not a Hugging Face model directory.
    """
    if not ref:
        raise UserError(
            "no LLM given; pass --model with a Qwen3 preset (e.g. Qwen3-8B) or a local model directory, "
            "or use --backend ict (no LLM)"
        )
    preset = find_preset(ref)
    models_dir = Path(models_dir or "Models")
    located = locate(ref, models_dir)
    if located.source == "missing" and preset:
        located = locate(preset.modelscope_id, models_dir)
    if located.source == "missing":
        fix = (
            f"run `offline-embft download --set llm={preset.modelscope_id}` on a connected machine and copy "
            f"{models_dir}/ here, or pass --model /path/to/{preset.name}"
            if preset
            else "pass --model with an existing model directory or a Qwen3 preset name (e.g. Qwen3-8B)"
        )
        raise UserError(
            f"LLM {ref!r} not found (looked for {located.path}, in {models_dir}/ and the ModelScope and Hugging Face "
            f"caches); {fix}"
        )
    path = located.path
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a Hugging Face model directory (no config.json); is the download complete?")
    return ResolvedModel(path=path, preset=preset or find_preset(path.name))
