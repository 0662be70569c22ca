"""Chunking cleaned text for the ingest stage: sized in tokens of the embedding model's own tokenizer (characters
without one), cut by LlamaIndex's ``SentenceSplitter`` set up for Chinese (paragraphs, then sentences ending in
。！？；, then clauses) or at the document's own units (:mod:`offline_embft.ingest.structure`); plus the train/val
split
helpers (a held-out stretch of a single file, a seeded split of files)."""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offline_embft.core.chunks import Chunk
from offline_embft.core.config import IngestConfig
from offline_embft.core.errors import UserError
from offline_embft.ingest.documents import Document
from offline_embft.ingest.structure import UnitSplitter

logger = logging.getLogger(__name__)

# Chinese sentence ends (plus their ASCII twins); closing quotes and brackets stay with their sentence.
SENTENCE_RE = re.compile(r"[。！？；!?;]+[”’」』）》)\]]*")
# Clause marks, the splitter's fallback inside a sentence that is longer than a chunk.
CLAUSE_REGEX = r"[^，、：,:]+[，、：,:]*|[，、：,:]+"
MIN_CHUNK_TOKENS = 16


def split_sentences(text: str) -> list[str]:
    """Split after each Chinese sentence end (。！？；), keeping the mark (and closing quotes) with its sentence."""
    parts: list[str] = []
    start = 0
    for match in SENTENCE_RE.finditer(text):
        parts.append(text[start : match.end()])
        start = match.end()
    if start < len(text):
        parts.append(text[start:])
    return [p for p in parts if p]


# ---------------------------------------------------------------------------------------------------------------
# Sizing: tokens of the embedding model's tokenizer, or characters when there is none


@dataclass
class Sizer:
    """How chunk length is counted, and the limit a chunk must respect."""

    unit: str  # "tokens" or "characters"
    tokenizer: Any = None
    path: str = ""
    special_tokens: int = 0
    max_seq_length: int = 0
    note: str = ""

    def count(self, text: str) -> int:
        """Length of ``text`` in the sizing unit, without special tokens."""
        return len(self.pieces(text))

    def pieces(self, text: str) -> list:
        if self.tokenizer is None:
            return list(text)
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def fits(self, text: str) -> bool:
        """Whether the model sees all of ``text`` (special tokens included); always true for characters."""
        return self.tokenizer is None or self.count(text) + self.special_tokens <= self.max_seq_length

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"unit": self.unit, "path": self.path}
        if self.tokenizer is not None:
            info.update(
                {
                    "class": type(self.tokenizer).__name__,
                    "vocab_size": len(self.tokenizer),
                    "special_tokens": self.special_tokens,
                    "max_seq_length": self.max_seq_length,
                }
            )
        if self.note:
            info["note"] = self.note
        return info


def resolve_sizer(cfg: IngestConfig) -> Sizer:
    """The tokenizer that sizes chunks, or characters (with a loud warning) when the default model isn't there.

    Raises:
        UserError: a tokenizer given explicitly (``tokenizer_strict``) does not exist or cannot be loaded.
    """
    from offline_embft.core.model_files import st_max_seq_length
    from offline_embft.core.tokenizer_check import load_tokenizer

    if not cfg.tokenizer:
        return Sizer("characters", note="no tokenizer configured: chunk_size counts characters")
    path = Path(cfg.tokenizer)
    if not path.is_dir():
        if cfg.tokenizer_strict:
            raise UserError(
                f"tokenizer directory {path} not found; pass an existing embedding model directory to --tokenizer"
            )
        note = (
            f"tokenizer directory {path} not found: chunks are sized by characters, not tokens, so nothing checks "
            "them against max_seq_length; run `offline-embft convert` (or download) first, or pass --tokenizer"
        )
        logger.warning("WARNING: %s", note)
        return Sizer("characters", path=str(path), note=note)
    tokenizer = load_tokenizer(path)
    max_len = cfg.max_seq_length
    declared = st_max_seq_length(path)
    note = ""
    if declared and declared < max_len:
        note = f"the model declares max_seq_length {declared} (< ingest.max_seq_length {max_len}); using {declared}"
        logger.info(note)
        max_len = declared
    specials = tokenizer.num_special_tokens_to_add(pair=False)
    return Sizer("tokens", tokenizer, str(path), specials, max_len, note)


def make_splitter(chunk_size: int, chunk_overlap: int, count: Callable[[str], list]) -> Any:
    """LlamaIndex's SentenceSplitter set up for Chinese text: paragraphs (one newline), then sentences (。！？；),
    then clauses (，、：), then characters; ``count`` returns a text's tokens (or characters)."""
    from llama_index.core.node_parser import SentenceSplitter

    return SentenceSplitter(
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        tokenizer=count,
        paragraph_separator="\n",
        separator=" ",
        chunking_tokenizer_fn=split_sentences,
        secondary_chunking_regex=CLAUSE_REGEX,
        include_metadata=False,
        include_prev_next_rel=False,
    )


# ---------------------------------------------------------------------------------------------------------------
# Chunking


class Chunker:
    """Splits cleaned text into chunks that fit the sizing unit's budget."""

    def __init__(self, cfg: IngestConfig, sizer: Sizer) -> None:
        size = cfg.chunk_size
        if sizer.tokenizer is not None:
            # chunk_size counts the whole sequence the model sees, special tokens included.
            if size > sizer.max_seq_length:
                logger.warning(
                    "WARNING: chunk_size %d is above max_seq_length %d: chunks are capped at %d tokens so none is "
                    "truncated",
                    size,
                    sizer.max_seq_length,
                    sizer.max_seq_length,
                )
                size = sizer.max_seq_length
            size -= sizer.special_tokens
        if size < MIN_CHUNK_TOKENS:
            raise UserError(f"chunk_size {cfg.chunk_size} leaves {size} {sizer.unit} per chunk; use at least 64")
        self.size = size
        self.overlap = min(cfg.chunk_overlap, size // 2)
        self.sizer = sizer
        self.splitter = make_splitter(size, self.overlap, sizer.pieces)
        self.resplit = 0
        self.by_units = cfg.chunking in ("units", "each-unit")
        self.units = UnitSplitter(
            size, sizer.count, lambda text: self._fit(self.splitter.split_text(text)), pack=cfg.chunking == "units"
        )

    def chunk(self, doc: Document, start: int, end: int) -> list[Chunk]:
        """Chunks of ``doc.clean.text[start:end]``, each located in the document and sized to fit."""
        if self.by_units:
            return [
                Chunk(
                    p.text,
                    doc.source,
                    doc.clean.pages_for(p.start, p.end) if doc.raw.paged and p.start >= 0 else [],
                    p.start,
                    p.end,
                    headings=p.headings,
                )
                for p in self.units.split(doc.clean.text, doc.outline, start, end)
            ]
        text = doc.clean.text[start:end]
        chunks: list[Chunk] = []
        cursor = 0
        for piece in self._fit(self.splitter.split_text(text)):
            found = text.find(piece, cursor)
            if found < 0:  # not expected (chunks are substrings); keep the chunk, without pages
                logger.debug("chunk not located in %s: %.40s", doc.source, piece)
                chunks.append(Chunk(piece, doc.source, [], -1, -1))
                continue
            cursor = found + 1
            a, b = start + found, start + found + len(piece)
            pages = doc.clean.pages_for(a, b) if doc.raw.paged else []
            chunks.append(Chunk(piece, doc.source, pages, a, b, headings=doc.outline.path_of(a, b)))
        return chunks

    def _fit(self, pieces: list[str]) -> list[str]:
        """Re-split any chunk the model would truncate (token counts of parts don't always add up exactly)."""
        fitted: list[str] = []
        for piece in pieces:
            if self.sizer.fits(piece):
                fitted.append(piece)
                continue
            self.resplit += 1
            size = self.size
            parts = [piece]
            while not all(self.sizer.fits(p) for p in parts) and size > MIN_CHUNK_TOKENS:
                size = max(MIN_CHUNK_TOKENS, int(size * 0.9))
                parts = make_splitter(size, 0, self.sizer.pieces).split_text(piece)
            fitted.extend(parts)
        return fitted


def holdout_span(text: str, val_ratio: float, rng: random.Random, units: Sequence[int] = ()) -> tuple[int, int] | None:
    """A seeded contiguous stretch of about ``val_ratio`` of ``text``, cut at paragraph (else sentence) boundaries.

    ``units``: where the document's own units start (articles, headings that do not just follow a heading); when
    there are enough of them the stretch is cut there, so no article is split between train and validation.
    Returns None when the text has too few boundaries to cut.
    """
    length = len(text)
    if val_ratio <= 0 or length == 0:
        return None
    cuts = [0, *(u for u in units if 0 < u < length), length]
    if len(cuts) < 5:
        cuts = [0, *(m.end() for m in re.finditer("\n", text)), length]
    if len(cuts) < 4:
        cuts = sorted({0, *(m.end() for m in SENTENCE_RE.finditer(text)), length})
    if len(cuts) < 3:
        return None
    target = val_ratio * length
    wanted_start = rng.uniform(0, max(0.0, length - target))
    start = min(cuts[:-1], key=lambda c: abs(c - wanted_start))
    end = min((c for c in cuts if c > start), key=lambda c: abs(c - (start + target)))
    if start == 0 and end == length:
        return None
    return start, end


def split_files(sources: list[str], val_ratio: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split of files into (train, val); val gets at least one file when there are two or more."""
    if val_ratio <= 0 or len(sources) < 2:
        return list(sources), []
    shuffled = sorted(sources)
    random.Random(seed).shuffle(shuffled)
    n_val = min(len(shuffled) - 1, max(1, int(len(shuffled) * val_ratio + 0.5)))
    val = set(shuffled[:n_val])
    return [s for s in sources if s not in val], [s for s in sources if s in val]
