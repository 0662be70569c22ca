"""The ingest stage: documents → clean Chinese text → token-aware chunks → train.jsonl / val.jsonl / stats.json.

Flow: find the PDF/DOCX/HTML/MD/TXT files under the input folder → read each (:mod:`offline_embft.ingest.loaders`; bad
files are skipped with a reason) → clean it (:mod:`offline_embft.ingest.clean`) → chunk it with LlamaIndex's
``SentenceSplitter`` set up for Chinese (paragraphs, then sentences ending in 。！？；, then clauses), or at the
document's own units first (:mod:`offline_embft.ingest.structure`, ``chunking: units``), sized in tokens of the
embedding
model's own tokenizer → drop short and exact-duplicate chunks → split train/val by file (seeded) → measure
UNK rate and truncation with the same tokenizer → write everything atomically.

Every chunk is a contiguous stretch of the cleaned document, so it knows the pages it came from. With a single
file, a seeded contiguous stretch of ~val_ratio of the text is held out, and each side is chunked on its own, so no
chunk and no chunk overlap crosses from train into validation.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offline_embft.core.chunks import Chunk
from offline_embft.core.chunks import write as write_chunks
from offline_embft.core.config import IngestConfig, save_config
from offline_embft.core.errors import UserError
from offline_embft.core.io import atomic_open
from offline_embft.ingest.chunking import Chunker, Sizer, holdout_span, resolve_sizer, split_files
from offline_embft.ingest.documents import Document, find_files, progress, read_documents, reason_counts
from offline_embft.ingest.loaders import SUFFIXES, SkipReason

logger = logging.getLogger(__name__)

TRAIN_FILE = "train.jsonl"
VAL_FILE = "val.jsonl"
STATS_FILE = "stats.json"
CONFIG_FILE = "ingest_config.yaml"

# ---------------------------------------------------------------------------------------------------------------
# The stage


def _prepare_sizer(cfg: IngestConfig) -> Sizer:
    """The sizer, with LlamaIndex imported too: both are slow imports, done while PDFs are parsed."""
    import llama_index.core.node_parser  # noqa: F401

    return resolve_sizer(cfg)


def run(cfg: IngestConfig) -> Path:
    """Ingest ``cfg.input_dir`` into ``cfg.out_dir`` (train.jsonl, val.jsonl, stats.json, ingest_config.yaml).

    Args:
        cfg: The ingest settings (input and output folders, tokenizer, chunk size, split).

    Returns:
        The output directory.

    Raises:
        UserError: the input folder is missing or holds no readable document, or an explicit tokenizer is missing.
    """
    started = time.perf_counter()
    input_dir, out_dir = _check_paths(cfg)

    # ---- Read: every file under the input folder, loaded and cleaned (the tokenizer loads meanwhile)
    files = find_files(input_dir, exclude=out_dir)
    documents, skipped, sizer = read_documents(input_dir, files, meanwhile=lambda: _prepare_sizer(cfg))
    _require_documents(documents, skipped, input_dir)
    sizer = sizer or _prepare_sizer(cfg)
    warnings: list[str] = [sizer.note] if sizer.note and sizer.unit == "characters" else []

    # ---- Chunk: token-aware, a single file's validation stretch chunked on its own
    chunker = Chunker(cfg, sizer)
    split_note = _chunk_documents(documents, chunker, cfg)
    warnings += [split_note] if split_note else []

    # ---- Drop noise: short chunks and exact duplicates
    dropped = _drop_noise(documents, cfg.min_chunk_chars)

    # ---- Split: train/val by file (by chunk for a single file)
    split = _split(documents, cfg, split_note)
    if cfg.val_ratio > 0 and not split.val:
        warnings.append("the validation set is empty")
        logger.warning("WARNING: the validation set is empty (val_ratio %s)", cfg.val_ratio)

    # ---- Coverage: UNK rate and truncation with the embedding model's tokenizer
    coverage = _coverage(sizer, split.train + split.val, cfg, warnings)

    # ---- Stats and write: all files at once, atomically
    stats = _stats(cfg, files, documents, skipped, split, dropped, chunker, coverage, warnings)
    stats["elapsed_s"] = round(time.perf_counter() - started, 2)
    _write(out_dir, split.train, split.val, stats)
    save_config(cfg, out_dir / CONFIG_FILE)
    _log_summary(documents, skipped, split, sizer, coverage, out_dir)
    return out_dir


def _check_paths(cfg: IngestConfig) -> tuple[Path, Path]:
    """The input and output folders, checked before any file is read."""
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
    return input_dir, out_dir


def _require_documents(documents: list[Document], skipped: list[dict[str, str]], input_dir: Path) -> None:
    """One line saying why there is nothing to ingest, when nothing could be read."""
    if documents:
        return
    if not any(item["reason"] != SkipReason.unsupported.value for item in skipped):
        kinds = ", ".join(sorted(SUFFIXES))
        raise UserError(f"no document to ingest in {input_dir} (looked for {kinds}); put your files there")
    raise UserError(
        f"no readable document in {input_dir}: {len(skipped)} file(s) skipped ({reason_counts(skipped)}); "
        f"see the warnings above, fix or replace those files"
    )


def _chunk_documents(documents: list[Document], chunker: Chunker, cfg: IngestConfig) -> str:
    """Chunk every document; a single file gets a held-out validation stretch. Returns the split note (or "")."""
    single = len(documents) == 1
    for doc in progress(documents, "chunking"):
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
    if not single:
        return ""
    note = (
        f"only one document ({documents[0].source}): split by chunk, a contiguous stretch of ~{cfg.val_ratio:.0%} "
        "of its text held out for validation, each side chunked separately so no text is in both"
    )
    if cfg.val_ratio > 0 and not documents[0].val_chunks:
        note = f"only one document ({documents[0].source}), too short to hold out a validation part"
    logger.warning("%s", note)
    return note


def _drop_noise(documents: list[Document], min_chars: int) -> Counter:
    """Drop short chunks and exact duplicates, in file order (the first occurrence wins, within and across splits).

    Returns:
        How many were dropped: ``{"short": n, "duplicates": m}``.
    """
    seen: set[str] = set()
    dropped: Counter = Counter(short=0, duplicates=0)

    def keep(chunk: Chunk) -> bool:
        if len(chunk.text.strip()) < min_chars:
            dropped["short"] += 1
            return False
        if chunk.text in seen:
            dropped["duplicates"] += 1
            return False
        seen.add(chunk.text)
        return True

    for doc in documents:
        doc.chunks = [c for c in doc.chunks if keep(c)]
        doc.val_chunks = [c for c in doc.val_chunks if keep(c)]
    return dropped


@dataclass
class Split:
    """The train/val split: its chunks and the files on each side."""

    train: list[Chunk]
    val: list[Chunk]
    train_files: list[str]
    val_files: list[str]
    single: bool
    note: str


def _split(documents: list[Document], cfg: IngestConfig, note: str) -> Split:
    """Train/val by file (seeded); a single file keeps the split it was chunked with.

    Raises:
        UserError: no chunk is left after dropping noise.
    """
    single = len(documents) == 1
    if single:
        train, val = documents[0].chunks, documents[0].val_chunks
        train_files = [documents[0].source] if train else []
        val_files = [documents[0].source] if val else []
    else:
        with_chunks = [d.source for d in documents if d.chunks]
        train_files, val_files = split_files(with_chunks, cfg.val_ratio, cfg.seed)
        by_source = {d.source: d for d in documents}
        train = [c for s in train_files for c in by_source[s].chunks]
        val = [c for s in val_files for c in by_source[s].chunks]
    if not train and not val:
        raise UserError(
            f"no chunk of at least {cfg.min_chunk_chars} characters in {cfg.input_dir}; lower "
            "ingest.min_chunk_chars or add documents with more text"
        )
    return Split(train, val, train_files, val_files, single, note)


def _coverage(sizer: Sizer, chunks: list[Chunk], cfg: IngestConfig, warnings: list[str]) -> Any:
    """The tokenizer's UNK rate and truncation on the chunks (None without a tokenizer); warnings appended."""
    if sizer.tokenizer is None:
        return None
    from offline_embft.core.tokenizer_check import measure

    coverage = measure(sizer.tokenizer, (c.text for c in chunks), sizer.max_seq_length)
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
    return coverage


def _stats(
    cfg: IngestConfig,
    files: list[Path],
    documents: list[Document],
    skipped: list[dict[str, str]],
    split: Split,
    dropped: Counter,
    chunker: Chunker,
    coverage: Any,
    warnings: list[str],
) -> dict[str, Any]:
    """stats.json: files read and skipped (with reasons), the split, chunk counts and sizes, tokens, warnings."""
    all_chunks = split.train + split.val
    chunk_counts = Counter(c.source for c in all_chunks)
    lengths = [len(c.text) for c in all_chunks]
    return {
        "input_dir": str(cfg.input_dir),
        "out_dir": str(cfg.out_dir),
        "files": {"found": len(files), "read": len(documents), "skipped": len(skipped)},
        "read": [_read_row(d, chunk_counts, split) for d in documents],
        "skipped": skipped,
        "skipped_by_reason": dict(Counter(item["reason"] for item in skipped)),
        "split": {
            "mode": "single-file-by-chunk" if split.single else "by-file",
            "seed": cfg.seed,
            "val_ratio": cfg.val_ratio,
            "train_files": split.train_files,
            "val_files": split.val_files,
            "note": split.note,
        },
        "chunks": {
            "train": len(split.train),
            "val": len(split.val),
            "dropped_duplicates": dropped["duplicates"],
            "dropped_short": dropped["short"],
            "resplit_to_fit": chunker.resplit,
            "unit": chunker.sizer.unit,
            "chunk_size": cfg.chunk_size,
            "effective_chunk_size": chunker.size,
            "chunk_overlap": chunker.overlap,
            "characters": {"total": sum(lengths), "mean": round(sum(lengths) / len(lengths), 1), "max": max(lengths)},
        },
        "tokenizer": chunker.sizer.describe(),
        "tokens": _token_stats(coverage, chunker.sizer.max_seq_length) if coverage is not None else None,
        "warnings": warnings,
    }


def _read_row(doc: Document, chunk_counts: Counter, split: Split) -> dict[str, Any]:
    """One file's line in stats.json."""
    return {
        "source": doc.source,
        "type": doc.raw.kind,
        "pages": doc.page_count,
        "encoding": doc.raw.encoding or None,
        "characters": len(doc.clean.text),
        "header_footer_lines_removed": doc.clean.removed_lines,
        "headings": len(doc.outline.headings),
        "units": len(doc.outline.unit_starts),
        "chunks": chunk_counts.get(doc.source, 0),
        "split": _split_label(doc.source, split.train_files, split.val_files),
        "notes": doc.raw.notes,
    }


def _token_stats(coverage: Any, max_seq_length: int) -> dict[str, Any]:
    """The tokenizer coverage, as stats.json reports it."""
    data = coverage.to_dict()
    return {
        "total": data["tokens"],
        "mean_per_chunk": round(data["tokens"] / max(1, data["texts"]), 1),
        "max_per_chunk_with_specials": data["max_tokens"],
        "unk_tokens": data["unk_tokens"],
        "unk_rate": data["unk_rate"],
        "truncated": data["truncated"],
        "truncation_rate": data["truncation_rate"],
        "max_seq_length": max_seq_length,
        "distinct_unk_chars": data["distinct_unk_chars"],
        "top_unk_chars": data["unk_chars"],
    }


def _log_summary(
    documents: list[Document], skipped: list[dict[str, str]], split: Split, sizer: Sizer, coverage: Any, out: Path
) -> None:
    skipped_text = f", {len(skipped)} skipped ({reason_counts(skipped)})" if skipped else ""
    unk = f", UNK rate {coverage.unk_rate:.1%}" if coverage is not None else ""
    how = (
        "single file split by chunk" if split.single else f"by file: {len(split.train_files)} / {len(split.val_files)}"
    )
    logger.info(
        "ingest: %d file(s) read%s; %d chunks: %d train / %d val (%s; sized in %s%s) → %s",
        len(documents),
        skipped_text,
        len(split.train) + len(split.val),
        len(split.train),
        len(split.val),
        how,
        sizer.unit,
        unk,
        out,
    )


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
