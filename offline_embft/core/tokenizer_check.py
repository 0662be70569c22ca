"""Can this embedding model read this corpus? UNK rate and truncation, measured with the model's own tokenizer.

Ingest reports it in stats.json, doctor shows it, and train uses the UNK characters to extend the vocabulary.
all-MiniLM-L6-v2 (and bge-small-en) map most Chinese characters to [UNK]: a model like that cannot learn a Chinese
corpus, and users deserve to be told before they spend a GPU-day on it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from offline_embft.core.errors import UserError
from offline_embft.core.model_files import tokenizer_dir


def load_tokenizer(model_dir: str | Path) -> Any:
    """Load a (fast, where possible) Hugging Face tokenizer from a local model or sentence-transformers directory."""
    from transformers import AutoTokenizer

    path = tokenizer_dir(model_dir)
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the tokenizer in {path}: {str(exc).splitlines()[0]}") from None


@dataclass
class TokenizerCoverage:
    """How well a tokenizer covers a set of texts."""

    texts: int = 0
    tokens: int = 0
    unk_tokens: int = 0
    truncated: int = 0
    max_seq_length: int = 0
    max_tokens: int = 0
    unk_chars: dict[str, int] = field(default_factory=dict)

    @property
    def unk_rate(self) -> float:
        return self.unk_tokens / self.tokens if self.tokens else 0.0

    @property
    def truncation_rate(self) -> float:
        return self.truncated / self.texts if self.texts else 0.0

    def to_dict(self, top_chars: int = 50) -> dict[str, Any]:
        data = asdict(self)
        data["unk_rate"] = round(self.unk_rate, 6)
        data["truncation_rate"] = round(self.truncation_rate, 6)
        data["unk_chars"] = dict(Counter(self.unk_chars).most_common(top_chars))
        data["distinct_unk_chars"] = len(self.unk_chars)
        return data


def measure(tokenizer: Any, texts: Iterable[str], max_seq_length: int = 512) -> TokenizerCoverage:
    """Count tokens, UNK tokens (and the characters behind them) and texts longer than ``max_seq_length``.

    Lengths include the special tokens the model adds ([CLS]/[SEP] or <s>/</s>), because that is what truncation
    sees. The characters behind UNK tokens come from offset mappings (fast tokenizers only).
    """
    unk_id = tokenizer.unk_token_id
    report = TokenizerCoverage(max_seq_length=max_seq_length)
    unk_chars: Counter[str] = Counter()
    specials = tokenizer.num_special_tokens_to_add(pair=False)
    offsets_ok = bool(getattr(tokenizer, "is_fast", False))
    for text in texts:
        encoded = tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=offsets_ok, return_attention_mask=False
        )
        ids = encoded["input_ids"]
        report.texts += 1
        report.tokens += len(ids)
        length = len(ids) + specials
        report.max_tokens = max(report.max_tokens, length)
        if length > max_seq_length:
            report.truncated += 1
        if unk_id is None:
            continue
        for position, token_id in enumerate(ids):
            if token_id != unk_id:
                continue
            report.unk_tokens += 1
            if offsets_ok:
                start, end = encoded["offset_mapping"][position]
                for char in text[start:end]:
                    if not char.isspace():
                        unk_chars[char] += 1
    report.unk_chars = dict(unk_chars)
    return report
