"""The ``convert`` section: any Hugging Face encoder → the sentence-transformers layout."""

from __future__ import annotations

from dataclasses import dataclass

from offline_embft.core.config.fields import check, documented

POOLINGS = ("cls", "mean")


@dataclass
class ConvertConfig:
    """Any Hugging Face encoder → sentence-transformers layout (Transformer → Pooling → Normalize)."""

    model: str = documented("Source model directory (Hugging Face layout, or already sentence-transformers).", "")
    out_dir: str = documented("Output sentence-transformers directory.", "")
    pooling: str = documented("Pooling: cls (BCE, BGE) or mean (MiniLM, m3e). Empty: keep the model's own.", "")
    max_seq_length: int = documented("max_seq_length saved with the model (BCE: 512).", 512)
    normalize: bool = documented("Append a Normalize module (cosine similarity as dot product).", True)

    def __post_init__(self) -> None:
        check(self.pooling in ("", *POOLINGS), f"convert.pooling must be cls or mean, got {self.pooling!r}")
        check(self.max_seq_length > 0, "convert.max_seq_length must be positive")
