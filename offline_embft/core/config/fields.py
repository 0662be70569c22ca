"""What every config section is built from: a field that carries its help text, the one-line checks that
``__post_init__`` runs, and the choices more than one section offers."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any

from offline_embft.core.errors import UserError

# Where negatives are mined (train.hard_negative_source, train_reranker.negative_source): one list for both.
NEGATIVE_SOURCES = ("model", "bm25", "both")
# train.extend_vocab and train_reranker.extend_vocab.
EXTEND_VOCAB = ("auto", "on", "off")
# train.precision and train_reranker.precision (auto: bf16/fp16 on GPU, fp32 on CPU).
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# ndcg@10 a general set may lose to fine-tuning (general.margin, evaluate/train.retention_margin): LM-Cocktail's own
# example lost 0.013 on the other tasks before its merge; 0.02 flags losses beyond that noise.
RETENTION_MARGIN = 0.02


def documented(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field carrying its help text: the one place it is written (CLI flags, ``config --keys`` and
    docs/config.md all show it from here)."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


def check(condition: bool, message: str) -> None:
    """Fail with ``message`` (one line, naming the key and the fix) unless ``condition`` holds."""
    if not condition:
        raise UserError(message)


def check_count(value: str, key: str) -> None:
    """``auto`` or a whole number >= 1 (process counts: replicas, training processes)."""
    check(
        value == "auto" or (value.isdigit() and int(value) >= 1),
        f"{key} must be auto or a whole number >= 1, got {value!r}",
    )
