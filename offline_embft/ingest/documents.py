"""Reading a folder of documents: find the files, load each (:mod:`offline_embft.ingest.loaders`), clean it
(:mod:`offline_embft.ingest.clean`), PDFs in worker processes when that pays off. Files that cannot be read are
skipped with
a reason, never fatal one by one."""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offline_embft.core.chunks import Chunk
from offline_embft.ingest.clean import CleanText, clean_pages
from offline_embft.ingest.loaders import SUFFIXES, LoadError, RawDocument, SkipReason, load
from offline_embft.ingest.structure import Outline, find_outline

logger = logging.getLogger(__name__)

# Reading PDFs in worker processes pays off above this much PDF (about a second of parsing).
PARALLEL_MIN_PDF_BYTES = 256 * 1024
MAX_WORKERS = 8


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
        """The document's headings and units (:mod:`offline_embft.ingest.structure`), found once."""
        if self._outline is None:
            self._outline = find_outline(self.clean.text, self.clean.headings)
        return self._outline


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


def progress(items: Iterable, desc: str, total: int | None = None) -> Any:
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
            results = list(progress(pending, "reading", total=len(jobs)))
    else:
        results = [_read_job(job) for job in progress(jobs, "reading")]
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


def reason_counts(skipped: list[dict[str, str]]) -> str:
    """Skip reasons with their counts, for one line: ``encrypted: 1, no_text: 2``."""
    counts = Counter(item["reason"] for item in skipped)
    return ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items()))


def _first_pages(path: Path, pages: int) -> list[str]:
    """The first pages of one document, read cheaply; nothing on a file that cannot be read."""
    try:
        if path.suffix.lower() == ".pdf":
            from pypdf import PdfReader

            reader = PdfReader(str(path))
            return [page.extract_text() or "" for page in reader.pages[:pages]]
        return load(path).pages[:pages]
    except Exception:  # a sample; a file ingest will skip (and explain) must not stop it
        return []


def sample_texts(input_dir: Path, files: int, pages: int, limit: int) -> list[str]:
    """Paragraph-sized pieces of the first ``pages`` pages of the ``files`` smallest documents (they read fastest):
    what doctor measures the tokenizer on before ingest has run."""
    if not input_dir.is_dir():
        return []
    found = [p for p in input_dir.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()]
    texts: list[str] = []
    for path in sorted(found, key=lambda p: p.stat().st_size)[:files]:
        for page in _first_pages(path, pages):
            texts.extend(line.strip() for line in page.splitlines() if len(line.strip()) >= 8)
    return texts[:limit]
