"""The user's own questions (a CSV) mapped to the chunks of the ingest output, for ``evaluate --questions``.

A handful of real questions tells a user more than a synthetic set. The CSV needs a ``question`` column and, per
row, where the answer is: either

* ``passage``: a snippet of the expected text, copied from the document (quoted in the CSV as usual); it matches
  every chunk that contains it, ignoring whitespace, full/half-width forms and line breaks — or, for a snippet that
  a chunk border cuts, the chunks holding the longest part of it (at least half of it); or
* ``source`` and ``page``: the document (file name, or its path relative to the input folder) and the 1-based page;
  every chunk of that file spanning that page matches.

A question whose answer matches no chunk is never dropped silently: it is listed (with the reason) in the report and
in ``unmatched.csv``; the report says how many questions were real and how many matched.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path

from offline_embft.core.chunks import Chunk
from offline_embft.core.chunks import read as read_chunks
from offline_embft.core.dataset import QADataset
from offline_embft.core.errors import UserError

_SPACE = re.compile(r"\s+", re.UNICODE)
SHINGLE = 6
MIN_PART = 0.5  # a snippet cut by a chunk border: the chunk must hold at least this share of it, in one piece


@dataclass
class Unmatched:
    """A question whose expected passage matched no chunk, and why."""

    row: int
    question: str
    expected: str
    reason: str


@dataclass
class RealQuestions:
    """Real questions as an evaluation dataset (over every chunk), and the ones that matched nothing."""

    dataset: QADataset
    total: int
    unmatched: list[Unmatched] = field(default_factory=list)

    @property
    def matched(self) -> int:
        return len(self.dataset.queries)


def normalize(text: str) -> str:
    """NFKC (full-width → half-width), no whitespace: PDF extraction breaks lines and spaces text unpredictably."""
    return _SPACE.sub("", unicodedata.normalize("NFKC", text))


def _shingles(text: str) -> set[str]:
    return {text[i : i + SHINGLE] for i in range(max(1, len(text) - SHINGLE + 1))}


class ChunkIndex:
    """Chunks searchable by snippet and by (source, page)."""

    def __init__(self, chunks: list[Chunk]) -> None:
        self.chunks = chunks
        self.texts = [normalize(c.text) for c in chunks]
        self.by_shingle: dict[str, set[int]] = {}
        for i, text in enumerate(self.texts):
            for gram in _shingles(text):
                self.by_shingle.setdefault(gram, set()).add(i)

    def by_snippet(self, snippet: str) -> list[str]:
        """Ids of the chunks holding the snippet (or, cut by a chunk border, the biggest part of it)."""
        wanted = normalize(snippet)
        if not wanted:
            return []
        candidates: set[int] = set()
        for gram in _shingles(wanted):
            candidates |= self.by_shingle.get(gram, set())
        whole = [i for i in sorted(candidates) if wanted in self.texts[i]]
        if whole:
            return [self.chunks[i].id for i in whole]
        best, parts = 0, []
        for i in sorted(candidates):
            text = self.texts[i]
            size = (
                SequenceMatcher(None, text, wanted, autojunk=False)
                .find_longest_match(0, len(text), 0, len(wanted))
                .size
            )
            if size > best:
                best, parts = size, [i]
            elif size == best and size:
                parts.append(i)
        if best < MIN_PART * len(wanted):
            return []
        return [self.chunks[i].id for i in parts]

    def by_page(self, source: str, page: int) -> list[str]:
        """Ids of the chunks of ``source`` (file name or relative path) that span ``page``."""
        source = source.strip().replace("\\", "/")
        return [
            c.id
            for c in self.chunks
            if (c.source == source or Path(c.source).name == Path(source).name) and page in (c.pages or [])
        ]


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The CSV's rows (UTF-8, with or without BOM), or a one-line UserError."""
    path = Path(path)
    hint = "a UTF-8 CSV with a `question` column and `passage` (a quoted snippet) or `source` + `page`"
    if not path.is_file():
        raise UserError(f"questions file {path} not found; pass {hint}")
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            fields = [f.strip().lower() for f in reader.fieldnames or []]
            rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except UnicodeDecodeError:
        raise UserError(f"questions file {path} is not UTF-8; save it as UTF-8 ({hint})") from None
    except csv.Error as exc:
        raise UserError(f"questions file {path} is not valid CSV ({exc}); pass {hint}") from None
    if "question" not in fields or not ({"passage"} <= set(fields) or {"source", "page"} <= set(fields)):
        raise UserError(f"questions file {path} has columns {fields}; it needs {hint}")
    return rows


def load(csv_path: str | Path, chunk_files: list[str | Path]) -> RealQuestions:
    """Map the CSV's questions to the chunks of ``chunk_files`` (all of them form the corpus).

    Raises:
        UserError: the CSV or a chunks file is missing or malformed, or the CSV holds no question.
    """
    if not chunk_files:
        raise UserError("--questions needs the chunks to map them to; pass --chunks CHUNKS.jsonl (ingest output)")
    chunks: list[Chunk] = []
    seen: set[str] = set()
    for chunk_file in chunk_files:
        for chunk in read_chunks(chunk_file)[0]:
            if chunk.id not in seen:
                seen.add(chunk.id)
                chunks.append(chunk)
    index = ChunkIndex(chunks)
    rows = read_csv(csv_path)
    dataset = QADataset(corpus={c.id: c.text for c in chunks})
    unmatched: list[Unmatched] = []
    total = 0
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        question = row.get("question", "")
        if not question:
            continue
        total += 1
        passage, source, page = row.get("passage", ""), row.get("source", ""), row.get("page", "")
        if passage:
            expected, ids = passage, index.by_snippet(passage)
            reason = "the snippet is in no chunk (check it is copied from the document, not retyped)"
        elif source and page:
            expected = f"{source} p. {page}"
            try:
                ids = index.by_page(source, int(page))
                reason = "no chunk of that file spans that page (check the file name and the 1-based page)"
            except ValueError:
                ids, reason = [], f"page {page!r} is not a number"
        else:
            expected, ids, reason = "", [], "no passage and no source + page given"
        if ids:
            query_id = f"real-{total:04d}"
            dataset.queries[query_id] = question
            dataset.relevant_docs[query_id] = ids
        else:
            unmatched.append(Unmatched(number, question, expected, reason))
    if not total:
        raise UserError(f"questions file {csv_path} holds no question; fill its `question` column")
    return RealQuestions(dataset, total, unmatched)


def unmatched_csv(unmatched: list[Unmatched]) -> str:
    """unmatched.csv: the questions that matched no chunk, with the CSV line and the reason."""
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["line", "question", "expected", "reason"])
    for item in unmatched:
        writer.writerow([item.row, item.question, item.expected, item.reason])
    return buffer.getvalue()
