"""The ingest stage: documents → clean Chinese text → token-aware chunks → train.jsonl / val.jsonl / stats.json.

Flow: find the PDF/DOCX/HTML/MD/TXT files under the input folder → read each (:mod:`offline_embft.loaders`; bad
files are skipped with a reason) → clean it (:mod:`offline_embft.clean`) → chunk it with LlamaIndex's
``SentenceSplitter`` set up for Chinese (paragraphs, then sentences ending in 。！？；, then clauses), or at the
document's own units first (:mod:`offline_embft.structure`, ``chunking: units``), sized in tokens of the embedding
model's own tokenizer → drop short and exact-duplicate chunks → split train/val by file (seeded) → measure
UNK rate and truncation with the same tokenizer → write everything atomically.

Every chunk is a contiguous stretch of the cleaned document, so it knows the pages it came from. With a single
file, a seeded contiguous stretch of ~val_ratio of the text is held out, and each side is chunked on its own, so no
chunk and no chunk overlap crosses from train into validation.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offline_embft.chunks import Chunk
from offline_embft.chunks import write as write_chunks
from offline_embft.clean import CleanText, clean_pages
from offline_embft.config import IngestConfig, save_config
from offline_embft.errors import UserError
from offline_embft.io import atomic_open
from offline_embft.loaders import SUFFIXES, LoadError, RawDocument, SkipReason, load
from offline_embft.structure import Outline, UnitSplitter, find_outline

logger = logging.getLogger(__name__)

TRAIN_FILE = "train.jsonl"
VAL_FILE = "val.jsonl"
STATS_FILE = "stats.json"
CONFIG_FILE = "ingest_config.yaml"

# Chinese sentence ends (plus their ASCII twins); closing quotes and brackets stay with their sentence.
SENTENCE_RE = re.compile(r"[。！？；!?;]+[”’」』）》)\]]*")
# Clause marks, the splitter's fallback inside a sentence that is longer than a chunk.
CLAUSE_REGEX = r"[^，、：,:]+[，、：,:]*|[，、：,:]+"
MIN_CHUNK_TOKENS = 16
# Reading PDFs in worker processes pays off above this much PDF (about a second of parsing).
PARALLEL_MIN_PDF_BYTES = 256 * 1024
MAX_WORKERS = 8


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
    from offline_embft.model_files import st_max_seq_length
    from offline_embft.tokenizer_check import load_tokenizer

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


@dataclass
class Document:
    """A readable file after cleaning."""

    source: str
    raw: RawDocument
    clean: CleanText
    page_count: int | None = None
    chunks: list[Chunk] = field(default_factory=list)
    val_chunks: list[Chunk] = field(default_factory=list)  # single-file split only
    _outline: Outline | None = None

    @property
    def outline(self) -> Outline:
        """The document's headings and units (:mod:`offline_embft.structure`), found once."""
        if self._outline is None:
            self._outline = find_outline(self.clean.text, self.clean.headings)
        return self._outline


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
        self.by_units = cfg.chunking == "units"
        self.units = UnitSplitter(size, sizer.count, lambda text: self._fit(self.splitter.split_text(text)))

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


# ---------------------------------------------------------------------------------------------------------------
# The stage


def find_files(input_dir: Path, exclude: Path | None = None) -> list[Path]:
    """Every non-hidden file under ``input_dir`` (recursively), sorted by relative path; ``exclude`` is skipped."""
    exclude = exclude.resolve() if exclude else None
    files = []
    for path in input_dir.rglob("*"):
        rel = path.relative_to(input_dir)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if exclude and (path.resolve() == exclude or exclude in path.resolve().parents):
            continue
        files.append(path)
    return sorted(files, key=lambda p: p.relative_to(input_dir).as_posix())


def _progress(items: Iterable, desc: str, total: int | None = None) -> Any:
    """A progress bar over ``items`` (hidden when stderr is not a terminal)."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, unit="file", leave=False, disable=None)


def _read_one(path: Path, source: str) -> tuple[Document | None, dict[str, str] | None]:
    """Load and clean one file: (document, None), or (None, skip record). Runs in worker processes too."""
    try:
        raw = load(path)
    except LoadError as exc:
        return None, {"source": source, "reason": exc.reason.value, "message": str(exc)}
    cleaned = clean_pages(raw.pages, markup=raw.markup, one_per_line=raw.one_per_line)
    if not cleaned.text.strip():
        return None, {"source": source, "reason": SkipReason.no_text.value, "message": "no text after cleaning"}
    page_count = len(raw.pages) if raw.paged else None
    raw.pages = []  # the cleaned text is all that is needed from here on (and all a worker sends back)
    return Document(source, raw, cleaned, page_count), None


def _read_job(job: tuple[Path, str]) -> tuple[Document | None, dict[str, str] | None]:
    return _read_one(*job)


def _workers(files: list[Path]) -> int:
    """Worker processes for reading. PDF parsing is CPU-bound pure Python, so a batch of PDFs is read in parallel
    on Linux, where forking a worker costs milliseconds; elsewhere (spawn re-imports the caller's main module, which
    a script without a main guard does not survive) and for small batches, files are read in this process."""
    if not sys.platform.startswith("linux"):
        return 1
    pdfs = [p for p in files if p.suffix.lower() == ".pdf"]
    if len(pdfs) < 2 or sum(p.stat().st_size for p in pdfs) < PARALLEL_MIN_PDF_BYTES:
        return 1
    return max(1, min(len(pdfs), len(os.sched_getaffinity(0)), MAX_WORKERS))


def read_documents(
    input_dir: Path, files: list[Path], meanwhile: Callable[[], Any] | None = None
) -> tuple[list[Document], list[dict[str, str]], Any]:
    """Read and clean every file (in parallel when worthwhile).

    Args:
        input_dir: The folder sources are named relative to.
        files: The files to read.
        meanwhile: Work for this process while worker processes parse PDFs (importing LlamaIndex, loading the
            tokenizer: seconds that would otherwise come after the reading). Not called when reading serially.

    Returns:
        The documents and the skip records, in file order, and what ``meanwhile`` returned (or None).
    """
    jobs = [(path, path.relative_to(input_dir).as_posix()) for path in files]
    workers = _workers(files)
    extra = None
    if workers > 1:
        # multiprocessing.Pool forks all its workers before it starts its own threads, and before `meanwhile`
        # loads a tokenizer whose thread pools a forked child must not inherit.
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            pending = pool.imap(_read_job, jobs)
            extra = meanwhile() if meanwhile else None
            results = list(_progress(pending, "reading", total=len(jobs)))
    else:
        results = [_read_job(job) for job in _progress(jobs, "reading")]
    documents: list[Document] = []
    skipped: list[dict[str, str]] = []
    for doc, skip in results:
        if skip is not None:
            skipped.append(skip)
            if skip["reason"] != SkipReason.unsupported.value:
                logger.warning("skipped %s: %s", skip["source"], skip["message"])
            continue
        assert doc is not None
        for note in doc.raw.notes:
            logger.warning("%s: %s", doc.source, note)
        documents.append(doc)
    return documents, skipped, extra


def _prepare_sizer(cfg: IngestConfig) -> Sizer:
    """The sizer, with LlamaIndex imported too: both are slow imports, done while PDFs are parsed."""
    import llama_index.core.node_parser  # noqa: F401

    return resolve_sizer(cfg)


def _reason_counts(skipped: list[dict[str, str]]) -> str:
    counts = Counter(item["reason"] for item in skipped)
    return ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items()))


def run(cfg: IngestConfig) -> Path:
    """Ingest ``cfg.input_dir`` into ``cfg.out_dir`` (train.jsonl, val.jsonl, stats.json, ingest_config.yaml).

    Returns:
        The output directory.

    Raises:
        UserError: the input folder is missing or holds no readable document, or an explicit tokenizer is missing.
    """
    started = time.perf_counter()
    if not cfg.input_dir:
        raise UserError(
            "no input directory; pass INPUT_DIR (a folder of PDF/DOCX/HTML/MD/TXT files) or set ingest.input_dir"
        )
    if not cfg.out_dir:
        raise UserError("no output directory; pass --out CHUNKS_DIR or set ingest.out_dir")
    input_dir, out_dir = Path(cfg.input_dir), Path(cfg.out_dir)
    if not input_dir.is_dir():
        raise UserError(f"input directory {input_dir} not found; pass the folder that holds your documents")
    if cfg.tokenizer and cfg.tokenizer_strict and not Path(cfg.tokenizer).is_dir():
        resolve_sizer(cfg)  # raises the one-line error before any file is read

    files = find_files(input_dir, exclude=out_dir)
    documents, skipped, sizer = read_documents(input_dir, files, meanwhile=lambda: _prepare_sizer(cfg))

    if not documents:
        if not any(item["reason"] != SkipReason.unsupported.value for item in skipped):
            kinds = ", ".join(sorted(SUFFIXES))
            raise UserError(f"no document to ingest in {input_dir} (looked for {kinds}); put your files there")
        raise UserError(
            f"no readable document in {input_dir}: {len(skipped)} file(s) skipped ({_reason_counts(skipped)}); "
            f"see the warnings above, fix or replace those files"
        )

    sizer = sizer or _prepare_sizer(cfg)
    warnings: list[str] = [sizer.note] if sizer.note and sizer.unit == "characters" else []
    chunker = Chunker(cfg, sizer)
    single = len(documents) == 1
    split_note = ""
    for doc in _progress(documents, "chunking"):
        held = None
        if single:
            after_heading = {h.end + 1 for h in doc.outline.headings}  # a heading stays with what it introduces
            units = [u for u in doc.outline.unit_starts if u not in after_heading]
            held = holdout_span(doc.clean.text, cfg.val_ratio, random.Random(cfg.seed), units)
        if held is None:
            doc.chunks = chunker.chunk(doc, 0, len(doc.clean.text))
        else:
            a, b = held
            doc.chunks = chunker.chunk(doc, 0, a) + chunker.chunk(doc, b, len(doc.clean.text))
            doc.val_chunks = chunker.chunk(doc, a, b)
    if single:
        split_note = (
            f"only one document ({documents[0].source}): split by chunk, a contiguous stretch of ~{cfg.val_ratio:.0%} "
            "of its text held out for validation, each side chunked separately so no text is in both"
        )
        if cfg.val_ratio > 0 and not documents[0].val_chunks:
            split_note = f"only one document ({documents[0].source}), too short to hold out a validation part"
        logger.warning("%s", split_note)
        warnings.append(split_note)

    # Drop noise and exact duplicates (in file order, so the first occurrence wins, within and across splits).
    seen: set[str] = set()
    dropped_short = dropped_dup = 0

    def keep(chunk: Chunk) -> bool:
        nonlocal dropped_short, dropped_dup
        if len(chunk.text.strip()) < cfg.min_chunk_chars:
            dropped_short += 1
            return False
        if chunk.text in seen:
            dropped_dup += 1
            return False
        seen.add(chunk.text)
        return True

    for doc in documents:
        doc.chunks = [c for c in doc.chunks if keep(c)]
        doc.val_chunks = [c for c in doc.val_chunks if keep(c)]

    if single:
        train_chunks, val_chunks = documents[0].chunks, documents[0].val_chunks
        train_files = [documents[0].source] if train_chunks else []
        val_files = [documents[0].source] if val_chunks else []
    else:
        with_chunks = [d.source for d in documents if d.chunks]
        train_files, val_files = split_files(with_chunks, cfg.val_ratio, cfg.seed)
        by_source = {d.source: d for d in documents}
        train_chunks = [c for s in train_files for c in by_source[s].chunks]
        val_chunks = [c for s in val_files for c in by_source[s].chunks]
    if not train_chunks and not val_chunks:
        raise UserError(
            f"no chunk of at least {cfg.min_chunk_chars} characters in {input_dir}; lower ingest.min_chunk_chars "
            "or add documents with more text"
        )
    if cfg.val_ratio > 0 and not val_chunks:
        warnings.append("the validation set is empty")
        logger.warning("WARNING: the validation set is empty (val_ratio %s)", cfg.val_ratio)

    all_chunks = train_chunks + val_chunks
    coverage = None
    if sizer.tokenizer is not None:
        from offline_embft.tokenizer_check import measure

        coverage = measure(sizer.tokenizer, (c.text for c in all_chunks), sizer.max_seq_length)
        if coverage.unk_rate > cfg.unk_warn_rate:
            message = (
                f"the tokenizer in {sizer.path} maps {coverage.unk_rate:.1%} of this corpus's tokens to "
                f"{sizer.tokenizer.unk_token} (more than {cfg.unk_warn_rate:.0%}): this model can't read this corpus; "
                "use a Chinese embedding model (e.g. BCE or bge-*-zh) or train with --extend-vocab on"
            )
            logger.warning("WARNING: %s", message)
            warnings.append(message)
        if coverage.truncated:
            message = f"{coverage.truncated} chunk(s) exceed max_seq_length {sizer.max_seq_length} and will be cut"
            logger.warning("WARNING: %s", message)
            warnings.append(message)

    chunk_counts = Counter(c.source for c in all_chunks)
    lengths = [len(c.text) for c in all_chunks]
    stats: dict[str, Any] = {
        "input_dir": str(input_dir),
        "out_dir": str(out_dir),
        "files": {"found": len(files), "read": len(documents), "skipped": len(skipped)},
        "read": [
            {
                "source": d.source,
                "type": d.raw.kind,
                "pages": d.page_count,
                "encoding": d.raw.encoding or None,
                "characters": len(d.clean.text),
                "header_footer_lines_removed": d.clean.removed_lines,
                "chunks": chunk_counts.get(d.source, 0),
                "split": _split_label(d.source, train_files, val_files),
                "notes": d.raw.notes,
            }
            for d in documents
        ],
        "skipped": skipped,
        "skipped_by_reason": dict(Counter(item["reason"] for item in skipped)),
        "split": {
            "mode": "single-file-by-chunk" if single else "by-file",
            "seed": cfg.seed,
            "val_ratio": cfg.val_ratio,
            "train_files": train_files,
            "val_files": val_files,
            "note": split_note,
        },
        "chunks": {
            "train": len(train_chunks),
            "val": len(val_chunks),
            "dropped_duplicates": dropped_dup,
            "dropped_short": dropped_short,
            "resplit_to_fit": chunker.resplit,
            "unit": sizer.unit,
            "chunk_size": cfg.chunk_size,
            "effective_chunk_size": chunker.size,
            "chunk_overlap": chunker.overlap,
            "characters": {
                "total": sum(lengths),
                "mean": round(sum(lengths) / len(lengths), 1),
                "max": max(lengths),
            },
        },
        "tokenizer": sizer.describe(),
        "tokens": None,
        "warnings": warnings,
    }
    if coverage is not None:
        data = coverage.to_dict()
        stats["tokens"] = {
            "total": data["tokens"],
            "mean_per_chunk": round(data["tokens"] / max(1, data["texts"]), 1),
            "max_per_chunk_with_specials": data["max_tokens"],
            "unk_tokens": data["unk_tokens"],
            "unk_rate": data["unk_rate"],
            "truncated": data["truncated"],
            "truncation_rate": data["truncation_rate"],
            "max_seq_length": sizer.max_seq_length,
            "distinct_unk_chars": data["distinct_unk_chars"],
            "top_unk_chars": data["unk_chars"],
        }
    stats["elapsed_s"] = round(time.perf_counter() - started, 2)

    _write(out_dir, train_chunks, val_chunks, stats)
    save_config(cfg, out_dir / CONFIG_FILE)
    skipped_text = f", {len(skipped)} skipped ({_reason_counts(skipped)})" if skipped else ""
    unk = f", UNK rate {coverage.unk_rate:.1%}" if coverage is not None else ""
    logger.info(
        "ingest: %d file(s) read%s; %d chunks: %d train / %d val (%s; %s%s) → %s",
        len(documents),
        skipped_text,
        len(all_chunks),
        len(train_chunks),
        len(val_chunks),
        "single file split by chunk" if single else f"by file: {len(train_files)} / {len(val_files)}",
        f"sized in {sizer.unit}",
        unk,
        out_dir,
    )
    return out_dir


def _split_label(source: str, train_files: list[str], val_files: list[str]) -> str:
    """Where a file's chunks went: train, val, both (a single file), or none (all its chunks were dropped)."""
    sides = [name for name, files in (("train", train_files), ("val", val_files)) if source in files]
    return "+".join(sides) or "none"


def _write(out_dir: Path, train: list[Chunk], val: list[Chunk], stats: dict[str, Any]) -> None:
    """Write train/val/stats together: each goes to a temp file first, and all are renamed only once all are
    written, so a crash leaves the previous output (or none), never a mix or a half file."""
    with ExitStack() as stack:
        handles = {
            name: stack.enter_context(atomic_open(out_dir / name)) for name in (TRAIN_FILE, VAL_FILE, STATS_FILE)
        }
        write_chunks(handles[TRAIN_FILE], train)
        write_chunks(handles[VAL_FILE], val)
        handles[STATS_FILE].write(json.dumps(stats, ensure_ascii=False, indent=2) + "\n")
