"""From a raw LLM completion to clean questions, and the filters that keep a training set honest.

Extraction undoes what chat models wrap around their questions: ``<think>`` blocks (closed, unclosed, or the empty
one Qwen3 leaves with ``/no_think``), lead-in lines ("以下是生成的问题："), role words and prefixes (``问题：``,
``Q1:``), numbering and bullets (``1.`` ``1、`` ``（1）`` ``一、`` ``-`` ``•`` ``①``), markdown and quotes; a question
is kept up to and including its question mark (？ or ?).

Each candidate then passes the filters, and every drop is counted by reason:

* ``empty``          the answer held no text at all (or only thinking)
* ``not_question``   a line without a question mark
* ``too_short`` / ``too_long``
* ``language``       a Chinese chunk needs a Chinese question (and the other way round)
* ``near_copy``      the question is mostly a verbatim span of the chunk
* ``duplicate``      the same question (ignoring spaces and punctuation) was already kept, for any chunk
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from string import Formatter

from offline_embft.core.han import HAN_RE

logger = logging.getLogger(__name__)

# How much of an unusable answer is kept for the stats file.
FAILED_ANSWER_CHARS = 300

# Questions per chunk when generate.questions_per_chunk is 0: (corpus smaller than this many chunks, questions).
# A small corpus gives few pairs, and several questions per chunk are the cheapest way to get more of them; a large
# one has pairs enough, and an LLM's time is better spent on more chunks.
QUESTIONS_BY_CORPUS = ((1000, 3), (5000, 2))

REASONS = ("empty", "not_question", "too_short", "too_long", "language", "near_copy", "duplicate")

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_LATIN_WORD = re.compile(r"[A-Za-z]+")
_QUESTION = re.compile(r"[^？?]*[？?]")
_CN_NUM = "一二三四五六七八九十"

# Leading markers, stripped repeatedly: bullets, numbering in every style models use, role words and prefixes.
_LEADING = re.compile(
    r"""^(?:
        [-–—•·*+●○◦▪■□►▶✓✔]+\s*                                  # bullets
      | \d{1,3}\s*(?:[.．](?!\d)|[、:：)）])\s*                     # 1.  1、  1)  1：
      | [（(]\s*\d{1,3}\s*[)）]\s*                                 # （1）  (1)
      | [（(]?["""
    + _CN_NUM
    + r"""]{1,3}[)）、.．:：]\s*           # 一、  （一）
      | [①-⑳]\s*
      | 第\s*[\d"""
    + _CN_NUM
    + r"""]{1,3}\s*[个道]?\s*(?:问题|题)\s*[:：、.．]?\s*     # 第1个问题 (not 第一条)
      | 【[^】]{0,8}】\s*                                          # 【问题】
      | \[[^\]]{0,8}\]\s*
      | (?:生成的问题|问题|提问|问|question|query|q|assistant|助手|回答|答案|答|a)\s*[\d"""
    + _CN_NUM
    + r"""]{0,3}
        \s*[:：.．、]\s*                                            # 问题：  Q1:  Question 2.  assistant:
      | [^？?:：\n]{0,24}问题\s*(?:如下|是)?\s*[:：]\s*              # 以下是生成的问题：xxx？ on one line
    )""",
    re.IGNORECASE | re.VERBOSE,
)
_PAIRED_QUOTES = {"“": "”", "「": "」", "『": "』", "‘": "’", "《": "》"}
_PLAIN_QUOTES = "\"'`"
# A line that only labels what follows ("问题", "Questions:", "生成的问题 1"): a heading, not an answer.
_LABEL_ONLY = re.compile(
    r"^(?:生成的)?(?:问题|提问|questions?|queries)\s*[\d一二三四五六七八九十]{0,3}$", re.IGNORECASE
)
_MARKDOWN_EMPHASIS = re.compile(r"\*\*|__|~~|`")
_HEADING = re.compile(r"^\s*(?:#{1,6}|>+)\s*")
_PUNCT_OR_SPACE = re.compile(r"[\W_]+", re.UNICODE)


@dataclass(frozen=True)
class FilterSettings:
    """Thresholds of the filters (from :class:`~offline_embft.core.config.GenerateConfig`)."""

    min_chars: int = 5
    max_chars: int = 150
    near_copy_ratio: float = 0.9
    # Pseudo-queries (backend ict) are statements copied from the chunk by design.
    require_question: bool = True
    check_copy: bool = True


def questions_per_chunk(setting: int, n_chunks: int) -> int:
    """Questions to ask per chunk: ``setting`` when positive, else sized by the corpus (:data:`QUESTIONS_BY_CORPUS`).

    Several questions of one chunk share its passage as their positive; training keeps them in different batches
    (``BatchSamplers.NO_DUPLICATES`` compares every column), so they never act as each other's false negatives.
    """
    if setting > 0:
        return setting
    return next((count for limit, count in QUESTIONS_BY_CORPUS if n_chunks < limit), 1)


def strip_thinking(text: str) -> tuple[str, bool]:
    """Remove ``<think>…</think>`` blocks; return the rest and whether a block was left unclosed.

    An unclosed ``<think>`` (the answer ran out of tokens while thinking) drops everything after it; a lone
    ``</think>`` (templates that open the block in the prompt) drops everything before it.
    """
    text = _THINK_BLOCK.sub("", text)
    lowered = text.lower()
    closing = lowered.rfind("</think>")
    if closing >= 0:
        text = text[closing + len("</think>") :]
        lowered = text.lower()
    opening = lowered.find("<think>")
    if opening >= 0:
        return text[:opening], True
    return text, False


def _clean_line(line: str) -> str:
    line = _HEADING.sub("", line)
    line = _MARKDOWN_EMPHASIS.sub("", line).strip()
    previous = None
    while previous != line:
        previous = line
        line = _unquote(_LEADING.sub("", line).strip())
    return line


def _unquote(text: str) -> str:
    """Strip quotes around a whole question, or left unpaired at its ends; keep quoted terms inside it."""
    while text:
        first, last = text[0], text[-1]
        if first in _PAIRED_QUOTES and first != "《":
            closing = _PAIRED_QUOTES[first]
            if text.find(closing) == len(text) - 1 or text.count(first) > text.count(closing):
                text = text[1:].removesuffix(closing if text.endswith(closing) else "").strip()
                continue
        if last in _PAIRED_QUOTES.values() and last != "》":
            opening = next(k for k, v in _PAIRED_QUOTES.items() if v == last)
            if text.count(last) > text.count(opening):
                text = text[:-1].strip()
                continue
        if first in _PLAIN_QUOTES and (last == first or text.count(first) % 2):
            text = text[1:].removesuffix(first).strip()
            continue
        if last in _PLAIN_QUOTES and text.count(last) % 2:
            text = text[:-1].strip()
            continue
        return text
    return text


def _balance_quotes(question: str) -> str:
    """Drop a quote mark left unpaired by cutting at the question mark (e.g. ``什么是“关联关系？``)."""
    for left, right in _PAIRED_QUOTES.items():
        if question.count(left) != question.count(right):
            question = question.replace(left, "").replace(right, "")
    for plain in _PLAIN_QUOTES:
        if question.count(plain) % 2:
            question = question.replace(plain, "")
    return question


@dataclass
class Extraction:
    """Candidates found in one raw answer, and how many of its lines were not questions."""

    candidates: list[str] = field(default_factory=list)
    not_questions: int = 0
    thinking_unclosed: bool = False


def extract_questions(raw: str, *, require_question: bool = True) -> Extraction:
    """Turn a raw completion into candidate questions (cleaned, each ending at its question mark).

    Args:
        raw: The model's answer, exactly as it came back.
        require_question: Keep only text up to a question mark (False for ict pseudo-queries: whole lines).
    """
    text, unclosed = strip_thinking(raw or "")
    result = Extraction(thinking_unclosed=unclosed)
    for raw_line in text.splitlines():
        line = _clean_line(raw_line)
        if not line or set(line) <= set("-=*_~#|: ") or _LABEL_ONLY.match(line):
            continue
        if line.endswith((":", "：")) and not _QUESTION.search(line):
            continue  # a lead-in such as "以下是根据资料生成的问题：" announces questions, it is not one
        if not require_question:
            result.candidates.append(line)
            continue
        segments = _QUESTION.findall(line)
        if not segments:
            result.not_questions += 1
            continue
        for segment in segments:
            question = _balance_quotes(_clean_line(segment))
            if question.strip("？? "):
                result.candidates.append(question)
    return result


def language(text: str) -> str | None:
    """``zh`` when Chinese characters outnumber Latin words, ``other`` when not, None for too little text."""
    cjk = len(HAN_RE.findall(text))
    words = len(_LATIN_WORD.findall(text))
    if cjk + words < 3:
        return None
    return "zh" if cjk >= words else "other"


def normalize(text: str) -> str:
    """Lower-cased text without spaces or punctuation, for duplicate and copy checks."""
    return _PUNCT_OR_SPACE.sub("", text).lower()


def copied_share(question: str, chunk: str) -> float:
    """Share of the question (punctuation ignored) that is one verbatim span of the chunk."""
    q, c = normalize(question), normalize(chunk)
    if not q or not c:
        return 0.0
    match = SequenceMatcher(None, c, q, autojunk=False).find_longest_match(0, len(c), 0, len(q))
    return match.size / len(q)


class QuestionFilter:
    """Applies the filters to the answers of a whole run, counting every drop by reason.

    One instance spans the run so that a question kept for one chunk counts as a duplicate for every other.
    """

    def __init__(self, settings: FilterSettings | None = None) -> None:
        self.settings = settings or FilterSettings()
        self.dropped: Counter[str] = Counter({reason: 0 for reason in REASONS})
        self.surplus = 0
        self.thinking_unclosed = 0
        # Normalized kept question → who kept it (None: the native engine, where a chunk's retry counts as another
        # answer; a prompt's hash for the CustomLLM, where asking the same prompt again is not a duplicate).
        self._seen: dict[str, str | None] = {}

    def reason(self, question: str, chunk: str, *, owner: str | None = None) -> str | None:
        """Why ``question`` must be dropped for ``chunk`` (None: keep it). Does not count anything.

        Args:
            question: A candidate from :func:`extract_questions`.
            chunk: The text it must be answerable from.
            owner: Who asks (a prompt's hash); a question kept before by the same owner is not a duplicate.
        """
        s = self.settings
        length = len(question)
        if length < s.min_chars:
            return "too_short"
        if length > s.max_chars:
            return "too_long"
        chunk_language = language(chunk)
        if chunk_language and language(question) != chunk_language:
            return "language"
        if s.check_copy and copied_share(question, chunk) >= s.near_copy_ratio:
            return "near_copy"
        key = normalize(question)
        if key in self._seen and (owner is None or self._seen[key] != owner):
            return "duplicate"
        return None

    def select(self, raw: str, chunk: str, limit: int, *, owner: str | None = None) -> tuple[list[str], Counter[str]]:
        """Up to ``limit`` clean questions from one raw answer for ``chunk``, and what was dropped from it.

        Kept questions are remembered, so the same question later (for any chunk, or any other ``owner``) is a
        duplicate.
        """
        extraction = extract_questions(raw, require_question=self.settings.require_question)
        dropped: Counter[str] = Counter()
        if extraction.thinking_unclosed:
            self.thinking_unclosed += 1
        if not extraction.candidates and not extraction.not_questions:
            dropped["empty"] += 1
        dropped["not_question"] += extraction.not_questions
        kept: list[str] = []
        for question in extraction.candidates:
            why = self.reason(question, chunk, owner=owner)
            if why:
                dropped[why] += 1
            elif normalize(question) in map(normalize, kept):
                dropped["duplicate"] += 1  # the same question twice in one answer
            elif len(kept) < limit:
                kept.append(question)
                self._seen[normalize(question)] = owner
            else:
                self.surplus += 1
        self.dropped.update(dropped)
        return kept, +dropped


def warn_about_run(questions: QuestionFilter, *, failed: int, chunks: int, attempts: int) -> None:
    """Log what a user must act on at the end of a generate run (both engines): failed chunks, cut-off thinking."""
    if failed:
        top = ", ".join(f"{k} {v}" for k, v in questions.dropped.most_common(3) if v)
        logger.warning(
            "%d of %d chunks got no valid question after %d attempts (dropped: %s); they stay in the corpus "
            "without queries; their last answers are in the stats file",
            failed,
            chunks,
            attempts,
            top or "engine errors",
        )
    if questions.thinking_unclosed:
        logger.warning(
            "%d answers ran out of tokens inside a <think> block: the chat template ignored enable_thinking=False; "
            "use a Qwen3 instruct checkpoint (or a template that honours it) or raise generate.max_new_tokens",
            questions.thinking_unclosed,
        )


# ----------------------------------------------------------------------------------------------------------------
# One answer at a time: what a LlamaIndex CustomLLM needs (complete() must return only questions)


class NoQuestionError(RuntimeError):
    """A model's answer held no usable question.

    Raised by a cleaning LLM's ``complete``: LlamaIndex's ``generate_qa_embedding_pairs`` catches any ``Exception``
    from ``llm.complete`` and asks again (up to ``retry_limit`` times), and the LLM answers the retry with another
    seed.
    """


# Where the LlamaIndex module that holds generate_qa_embedding_pairs and its default prompt lives. It is looked up in
# sys.modules only: importing llama_index.finetuning takes seconds and is deprecated upstream, and its prompt only
# matters to someone who has imported it already.
LLAMAINDEX_PROMPT_MODULE = "llama_index.finetuning.embeddings.common"


class PromptShape:
    """Where the chunk and the number of questions sit in the prompts rendered from one template.

    Accepts both placeholder styles: ours (``{context}``, ``{num_questions}``, filled by plain replacement) and
    LlamaIndex's ``str.format`` style (``{context_str}``, ``{num_questions_per_chunk}``, with ``{{ }}`` escapes).
    """

    def __init__(self, template: str) -> None:
        if "{context_str}" in template:
            parts = [
                piece
                for literal, name, _, _ in Formatter().parse(template)
                for piece in (("text", literal), ("field", name))
                if piece[1]
            ]
            names = {"context_str": "context", "num_questions_per_chunk": "count"}
        else:
            parts = [
                ("field", p[1:-1]) if p in ("{context}", "{num_questions}") else ("text", p)
                for p in re.split(r"(\{context\}|\{num_questions\})", template)
                if p
            ]
            names = {"context": "context", "num_questions": "count"}
        pattern, seen = [], set()
        for kind, value in parts:
            group = names.get(value) if kind == "field" else None
            if group is None:
                pattern.append(re.escape(value if kind == "text" else "{" + value + "}"))
            elif group in seen:
                pattern.append(f"(?P={group})")
            else:
                seen.add(group)
                pattern.append(f"(?P<{group}>.*)" if group == "context" else rf"(?P<{group}>\d+)")
        self.template = template
        self._pattern = re.compile("".join(pattern), re.DOTALL)

    def match(self, prompt: str) -> tuple[str, int | None] | None:
        """(chunk text, questions asked for or None) when ``prompt`` was rendered from this template, else None."""
        found = self._pattern.fullmatch(prompt)
        if found is None:
            return None
        groups = found.groupdict()
        count = groups.get("count")
        return groups.get("context", prompt).strip(), int(count) if count else None


@dataclass
class PromptRecord:
    """What happened to one prompt's answers so far (the stats of the ``llamaindex`` engine read these)."""

    answers: int = 0
    failures: int = 0
    engine_errors: int = 0
    kept: int = 0
    last_answer: str = ""
    last_dropped: Counter[str] = field(default_factory=Counter)

    @property
    def retry_offset(self) -> int:
        """How far the next attempt's seed is from the first one's: one step per failed attempt."""
        return self.failures + self.engine_errors


class QuestionCleaner:
    """Cleans answers one prompt at a time, with the same extraction and filters as the native engine.

    The chunk (for the language and copy filters) and the number of questions the prompt asks for are read from the
    prompt when it was rendered from a known template (the LLM's own, the built-in one, LlamaIndex's default);
    otherwise the whole prompt stands for the chunk and every valid question is returned (LlamaIndex keeps the first
    ``num_questions_per_chunk`` itself).

    Args:
        settings: Filter thresholds (from the generate config).
        templates: Prompt templates whose prompts can be read back exactly.
        questions_per_chunk: How many questions to return when the prompt does not say (None: all valid ones).
    """

    def __init__(
        self,
        settings: FilterSettings | None = None,
        *,
        templates: Sequence[str] = (),
        questions_per_chunk: int | None = None,
    ) -> None:
        self.filter = QuestionFilter(settings)
        self.questions_per_chunk = questions_per_chunk
        self.failures = 0
        self._shapes = [PromptShape(t) for t in dict.fromkeys(templates) if t]
        self._llamaindex_shape_added = False
        self._records: dict[str, PromptRecord] = {}

    @staticmethod
    def prompt_key(prompt: str) -> str:
        """The key a prompt's record is kept under (a hash: prompts are long, there is one per chunk)."""
        return hashlib.sha1(prompt.encode("utf-8")).hexdigest()

    def record(self, prompt: str) -> PromptRecord:
        """The record of ``prompt`` (an empty one if it was never answered)."""
        return self._records.get(self.prompt_key(prompt)) or PromptRecord()

    def read_prompt(self, prompt: str) -> tuple[str, int | None]:
        """The chunk inside ``prompt`` and the number of questions it asks for (None when not known)."""
        for shape in self._known_shapes():
            found = shape.match(prompt)
            if found:
                return found
        return prompt, None

    def _known_shapes(self) -> list[PromptShape]:
        if not self._llamaindex_shape_added:
            module = sys.modules.get(LLAMAINDEX_PROMPT_MODULE)
            template = getattr(module, "DEFAULT_QA_GENERATE_PROMPT_TMPL", None)
            if template:
                self._shapes.append(PromptShape(template))
                self._llamaindex_shape_added = True
        return self._shapes

    def clean(self, prompt: str, raw: str) -> list[str]:
        """The clean questions in ``raw``, the answer to ``prompt``: as many as the prompt asks for, or fewer.

        Every drop is counted by reason in ``self.filter.dropped``; an answer with nothing usable counts in
        ``self.failures`` and in the prompt's record.
        """
        chunk, asked = self.read_prompt(prompt)
        limit = asked or self.questions_per_chunk or sys.maxsize
        key = self.prompt_key(prompt)
        record = self._records.setdefault(key, PromptRecord())
        questions, dropped = self.filter.select(raw, chunk, limit, owner=key)
        record.answers += 1
        record.kept = len(questions)
        record.last_dropped = dropped
        if questions:
            record.last_answer = ""  # kept for failures only: there is one record per chunk of a large run
        else:
            record.failures += 1
            record.last_answer = raw[:FAILED_ANSWER_CHARS]
            self.failures += 1
        return questions

    def engine_error(self, prompt: str) -> None:
        """Count an attempt where the engine gave no answer at all (a server error after its retries)."""
        record = self._records.setdefault(self.prompt_key(prompt), PromptRecord())
        record.engine_errors += 1
        record.last_dropped = Counter({"engine_error": 1})
        record.last_answer = ""

    def failure_message(self, prompt: str, raw: str) -> str:
        """One line for a :class:`NoQuestionError`: why the answer was unusable and how it began."""
        reasons = ", ".join(f"{k} {v}" for k, v in self.record(prompt).last_dropped.most_common()) or "nothing"
        preview = " ".join(raw.split())[:80]
        return f"no usable question in the answer (dropped: {reasons}): {preview!r}"
