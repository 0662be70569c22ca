"""The chunk format, in one place: what ingest writes and generate and doctor read.

A chunks file is JSONL, one object a line: ``{"id", "text", "source", "pages", "headings"}``. The id is a content
hash of the text (the same text gets the same id in every run); ``source`` is the document's path relative to the
input folder, ``pages`` the 1-based pages the chunk spans (empty for unpaged formats) and ``headings`` the heading
path of its text, outermost first (e.g. ``["中华人民共和国公司法", "第三章 …"]``; empty without headings; files
written before it existed have none).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from offline_embft.core.errors import UserError

_HINT = 'pass a chunks JSONL written by `offline-embft ingest` (one {"id", "text", ...} object a line)'


def content_id(text: str) -> str:
    """A stable content hash: the same text gets the same id in every run."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class Chunk:
    """One chunk: a contiguous stretch ``[start, end)`` of a cleaned document.

    Attributes:
        text: The chunk's text.
        source: The document it came from (relative path).
        pages: The 1-based pages it spans (empty for unpaged documents).
        start: Where it starts in the cleaned document (-1: unknown, e.g. read back from a file).
        end: Where it ends in the cleaned document (-1: unknown).
        id: The chunk id; empty means the content hash of ``text``.
        headings: The heading path of its text, outermost first (:mod:`offline_embft.ingest.structure`).
    """

    text: str
    source: str = ""
    pages: list[int] = field(default_factory=list)
    start: int = -1
    end: int = -1
    id: str = ""
    headings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.id:
            self.id = content_id(self.text)

    def row(self) -> dict[str, Any]:
        """The chunk as one line of a chunks file."""
        return {
            "id": self.id,
            "text": self.text,
            "source": self.source,
            "pages": self.pages,
            "headings": self.headings,
        }


def write(handle: IO[str], chunks: Iterable[Chunk]) -> None:
    """Write ``chunks`` to an open text handle, one JSON object a line (the caller makes the file atomic)."""
    for chunk in chunks:
        handle.write(json.dumps(chunk.row(), ensure_ascii=False) + "\n")


def read(path: str | Path, limit: int | None = None) -> tuple[list[Chunk], int]:
    """Read a chunks JSONL written by ingest; return the chunks (text stripped) and how many empty ones were skipped.

    Args:
        path: The chunks file.
        limit: Stop after this many chunks (None: read all).

    Returns:
        (chunks, skipped): the chunks with text, in file order, and the count of chunks with empty text.

    Raises:
        UserError: the file is missing, not JSONL, has a line without ``id``/``text``, a duplicate id, or no chunk.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"chunks file {path} not found; run `offline-embft ingest` first or {_HINT}")
    chunks: list[Chunk] = []
    seen: set[str] = set()
    skipped = 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"chunks file {path} is not UTF-8 text; {_HINT}") from None
    for number, line in enumerate(lines, start=1):
        if limit is not None and len(chunks) >= limit:
            break
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number} is not valid JSON ({exc.msg}); {_HINT}") from None
        if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("text"), str):
            raise UserError(f"{path}:{number} has no 'id' and 'text' fields; {_HINT}")
        chunk_id = str(row["id"])
        if chunk_id in seen:
            raise UserError(f"{path}:{number} repeats chunk id {chunk_id!r}; chunk ids must be unique (re-run ingest)")
        seen.add(chunk_id)
        if not row["text"].strip():
            skipped += 1
            continue
        chunks.append(
            Chunk(
                row["text"].strip(),
                str(row.get("source", "")),
                list(row.get("pages") or []),
                id=chunk_id,
                headings=[str(h) for h in row.get("headings") or []],
            )
        )
    if not chunks:
        raise UserError(f"chunks file {path} holds no chunk with text; check ingest's stats.json for why")
    return chunks, skipped
