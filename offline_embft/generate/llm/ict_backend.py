"""Inverse cloze task (ICT): pseudo-queries without any LLM, for CPU-only machines and the demo.

A sentence drawn from the chunk becomes the query and, most of the time (``1 - keep_prob``, 90% by default, as in
Lee et al. 2019, "Latent Retrieval for Weakly Supervised Open Domain QA"), is removed from its positive passage so
the model must match a statement to its context rather than to itself. This teaches topical matching, not question
answering: a real LLM's questions train a better retriever. It is deterministic for a given seed and fast (thousands
of chunks a second).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from typing import Any

from llama_index.core.bridge.pydantic import PrivateAttr

from offline_embft.generate.llm.base import BatchLLM, Sampling

# A sentence ends at Chinese or Western terminal punctuation, or at a line break; a clause also at a comma.
_SENTENCE = re.compile(r"[^。！？!?；;\n]+[。！？!?；;]*")
_CLAUSE = re.compile(r"[^。！？!?；;，,：:\n]+[。！？!?；;，,：:]*")
_TRAILING = "。；;，,、：:"


def split_sentences(text: str) -> list[str]:
    """Sentences of a text, each with its terminal punctuation, stripped.

    A text of one sentence is split into clauses instead: a query equal to its whole passage teaches nothing.
    """
    sentences = [s.strip() for s in _SENTENCE.findall(text) if s.strip()]
    if len(sentences) > 1:
        return sentences
    return [s.strip() for s in _CLAUSE.findall(text) if s.strip()]


def _rng(*parts: Any) -> random.Random:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def pick_sentences(text: str, count: int, seed: int | None, *, min_chars: int = 5, max_chars: int = 150) -> list[str]:
    """Up to ``count`` distinct sentences of ``text`` (terminal punctuation dropped), chosen by ``seed``."""
    candidates = []
    for sentence in split_sentences(text):
        query = sentence.rstrip(_TRAILING).strip()
        if min_chars <= len(query) <= max_chars and query not in candidates:
            candidates.append(query)
    rng = _rng("ict", seed, text)
    return rng.sample(candidates, min(count, len(candidates)))


def mask_positive(text: str, queries: Sequence[str], *, seed: int | None, chunk_id: str, keep_prob: float) -> str:
    """Remove each query sentence from its passage with probability ``1 - keep_prob`` (never emptying the passage).

    Args:
        text: The chunk text (the positive passage).
        queries: Sentences of ``text`` used as queries.
        seed: Run seed (with ``chunk_id``, makes the choice reproducible).
        chunk_id: The chunk's id.
        keep_prob: Chance that a query sentence stays in the passage.
    """
    rng = _rng("mask", seed, chunk_id)
    for query in queries:
        if rng.random() < keep_prob:
            continue
        match = re.search(re.escape(query) + r"[。！？!?；;，,]*\s*", text)
        if match is None:
            continue
        rest = (text[: match.start()] + text[match.end() :]).strip()
        # A passage reduced to a fragment would be a worse positive than one that still holds the query.
        if len(rest) >= max(10, len(query)):
            text = rest
    return text


class IctLLM(BatchLLM):
    """Answers each prompt with sentences of the context it contains (no model; ``pseudo_queries``)."""

    backend = "ict"
    pseudo_queries = True

    @classmethod
    def from_config(cls, cfg: Any, template: str) -> IctLLM:
        return cls(
            template,
            Sampling.from_config(cfg),
            questions_per_chunk=cfg.questions_per_chunk,
            min_chars=cfg.min_question_chars,
            max_chars=cfg.max_question_chars,
        )

    _prefix: str = PrivateAttr(default="")
    _suffix: str = PrivateAttr(default="")
    _count: int = PrivateAttr(default=1)
    _min_chars: int = PrivateAttr(default=5)
    _max_chars: int = PrivateAttr(default=150)

    def __init__(
        self,
        template: str,
        sampling: Sampling,
        *,
        questions_per_chunk: int = 1,
        min_chars: int = 5,
        max_chars: int = 150,
    ) -> None:
        super().__init__(model_name="ict", sampling=sampling, fingerprint="ict-v1")
        # The context sits between the template's prefix and suffix; find it again in each rendered prompt.
        rendered = template.replace("{num_questions}", str(questions_per_chunk))
        self._prefix, _, self._suffix = rendered.partition("{context}")
        self._count = questions_per_chunk
        self._min_chars, self._max_chars = min_chars, max_chars

    def context_of(self, prompt: str) -> str:
        """The chunk text inside a prompt rendered from the template (the whole prompt when it does not match)."""
        if (
            prompt.startswith(self._prefix)
            and prompt.endswith(self._suffix)
            and len(prompt) >= len(self._prefix) + len(self._suffix)
        ):
            return prompt[len(self._prefix) : len(prompt) - len(self._suffix)]
        return prompt

    def _generate(self, prompts: list[str], sampling: Sampling) -> list[str | None]:
        return [
            "\n".join(
                pick_sentences(
                    self.context_of(prompt),
                    self._count,
                    sampling.seed,
                    min_chars=self._min_chars,
                    max_chars=self._max_chars,
                )
            )
            for prompt in prompts
        ]
