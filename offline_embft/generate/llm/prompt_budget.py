"""Token budget of a prompt, counted the way the engine counts it: the LLM's own tokenizer and chat template.

vLLM rejects a request whose rendered prompt has ``max_model_len`` tokens or more (vllm 0.33
vllm/v1/engine/input_processor.py:574-601: "The decoder prompt (length N) is longer than the maximum model length
of M", and the same for a prompt of exactly M, which leaves no room for one output token), and it does so while
adding the requests of a ``chat`` call, so the WHOLE call fails (vllm/entrypoints/common/offline.py:548-564 aborts
the requests already added and re-raises). A character cap is no token cap: rare CJK characters cost 2-3 tokens, and
users lower ``max_model_len`` or write longer prompt templates. Every backend (vLLM, transformers, and the replicas
that run them) therefore shares this one budget:

- :meth:`PromptBudget.count` — tokens of the chat-rendered user message;
- :meth:`PromptBudget.fit` — shorten the chunk inside the prompt until prompt + answer fit (the generate stage);
- :func:`is_too_long_error` — recognise the engine's own rejection, the last defence when a count was wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from offline_embft.generate.llm.base import CHAT_TEMPLATE_KWARGS, PROMPT_TOO_LONG

logger = logging.getLogger(__name__)

__all__ = ["PROMPT_TOO_LONG", "Fitted", "PromptBudget", "is_too_long_error"]
# The words vLLM's input processor uses (0.30 and 0.33: vllm/v1/engine/input_processor.py) and the OpenAI-compatible
# servers' 400 ("maximum context length"): enough to tell this rejection from any other error.
_TOO_LONG_MARKERS = ("longer than the maximum model length", "maximum context length")
# Fewer characters than this left of a chunk is no longer a chunk worth asking about.
MIN_CHUNK_CHARS = 20
COUNT_BATCH = 1024  # prompts tokenized per call when counting many


def is_too_long_error(exc: BaseException) -> bool:
    """True for an engine's "prompt longer than the model's context" rejection of a request.

    vLLM 0.30-0.33 raise ``vllm.exceptions.VLLMValidationError`` (``VLLMClientError(VLLMError(Exception))``, NOT a
    ValueError); older V1 releases raised ``ValueError`` for the same condition. The message decides, not the class.
    """
    names = {cls.__name__ for cls in type(exc).__mro__}
    if not names & {"VLLMValidationError", "VLLMError", "ValueError"}:
        return False
    return any(marker in str(exc) for marker in _TOO_LONG_MARKERS)


@dataclass(frozen=True)
class Fitted:
    """A prompt that fits the budget, built around ``text``: the chunk less its last ``cut_chars`` characters."""

    prompt: str
    tokens: int
    text: str
    cut_chars: int = 0


class PromptBudget:
    """How many tokens a user message costs once the chat template wraps it, against the room the engine gives it.

    Args:
        tokenizer: The LLM's Hugging Face tokenizer (vLLM: ``LLM.get_tokenizer()``), with its chat template.
        max_model_len: The engine's context length (prompt + answer).
        max_new_tokens: Room kept for the answer: a prompt may take ``max_model_len - max_new_tokens`` tokens.
    """

    def __init__(self, tokenizer: Any, max_model_len: int, max_new_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        # vLLM needs at least one free position for the answer (input_processor.py: prompt == max_model_len fails).
        self.limit = max(1, max_model_len - max(1, max_new_tokens))
        self._has_template = bool(getattr(tokenizer, "chat_template", None))

    def render(self, prompt: str) -> str:
        """The text the engine tokenizes: the user message inside the chat template, thinking off."""
        if not self._has_template:
            return prompt
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, **CHAT_TEMPLATE_KWARGS
        )

    def count_many(self, prompts: Sequence[str]) -> list[int]:
        """Tokens of each rendered prompt (the template holds the special tokens: none are added again)."""
        if not prompts:
            return []
        encoded = self.tokenizer([self.render(p) for p in prompts], add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def count(self, prompt: str) -> int:
        return self.count_many([prompt])[0]

    def fits(self, prompt: str) -> bool:
        return self.count(prompt) <= self.limit

    def fit(self, build: Callable[[str], str], text: str, tokens: int | None = None) -> Fitted | None:
        """The prompt ``build(text)``, with ``text`` cut at the end until the prompt fits; None if nothing does.

        Args:
            build: Renders the prompt around a chunk text (the prompt template).
            text: The chunk.
            tokens: The token count of ``build(text)`` when already known (saves one count).

        Returns:
            The fitting prompt, or None when even a :data:`MIN_CHUNK_CHARS`-character chunk does not fit (the
            template alone is too long for ``max_model_len``).
        """
        prompt = build(text)
        tokens = self.count(prompt) if tokens is None else tokens
        if tokens <= self.limit:
            return Fitted(prompt, tokens, text)
        # Token counts grow with the prefix length: binary search the longest prefix that fits.
        low, high, best = MIN_CHUNK_CHARS, len(text) - 1, None
        while low <= high:
            middle = (low + high) // 2
            candidate = build(text[:middle])
            count = self.count(candidate)
            if count <= self.limit:
                best, low = Fitted(candidate, count, text[:middle], len(text) - middle), middle + 1
            else:
                high = middle - 1
        return best

    def fit_many(self, build: Callable[[str], str], texts: Mapping[str, str]) -> dict[str, Fitted | None]:
        """:meth:`fit` for many chunks: every prompt counted in batches, only the over-long ones searched.

        Args:
            build: Renders the prompt around a chunk text.
            texts: Chunk id → chunk text.

        Returns:
            Chunk id → the fitting prompt (``cut_chars`` > 0 where the chunk was shortened), or None where nothing
            fits (the template alone is too long).
        """
        ids = list(texts)
        prompts = [build(texts[i]) for i in ids]
        counts: list[int] = []
        for start in range(0, len(ids), COUNT_BATCH):
            counts += self.count_many(prompts[start : start + COUNT_BATCH])
        return {
            chunk_id: Fitted(prompt, count, texts[chunk_id])
            if count <= self.limit
            else self.fit(build, texts[chunk_id], count)
            for chunk_id, prompt, count in zip(ids, prompts, counts, strict=True)
        }

    def too_long_reason(self) -> str:
        """Why a prompt that no shortening fits is refused (a ``prompt_too_long`` reason for the stats)."""
        return (
            f"{PROMPT_TOO_LONG}: even a short piece of the chunk makes the prompt longer than the {self.limit} tokens "
            f"max_model_len {self.max_model_len} leaves beside the answer; shorten the prompt template or raise "
            "generate.max_model_len"
        )
