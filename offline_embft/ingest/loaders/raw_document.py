"""What a loader returns, and how it fails: :class:`RawDocument`, :class:`LoadError` with its :class:`SkipReason`,
and :func:`decode_text` for bytes of unknown encoding. Shared by :mod:`offline_embft.ingest.loaders` and the format
loaders it dispatches to (:mod:`offline_embft.ingest.loaders.docx`, :mod:`offline_embft.ingest.loaders.html`), which
import it
from here rather than from their dispatcher."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

_CHINESE_ENCODINGS = ("gb18030", "gbk", "gb2312", "hz")


class SkipReason(str, Enum):
    """Why a file was not ingested (the value is what stats.json and the summary line show)."""

    unreadable = "unreadable"
    empty = "empty"
    encrypted = "encrypted"
    corrupt = "corrupt"
    image_only = "image-only"
    no_text = "no-text"
    misnamed = "misnamed"
    needs_conversion = "needs-conversion"
    unsupported = "unsupported"


class LoadError(Exception):
    """A file that cannot be ingested: ``reason`` classifies it, the message says what to do."""

    def __init__(self, reason: SkipReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class RawDocument:
    """A readable file's raw text, page by page (a TXT/Markdown file is one page, or several at form feeds)."""

    path: Path
    kind: str  # pdf | docx | html | markdown | text
    pages: list[str]
    paged: bool  # True for PDFs: chunk pages are reported
    encoding: str = ""
    notes: list[str] = field(default_factory=list)
    # Headings are written as Markdown heading lines (`#` × level, a space, the title): DOCX, HTML, Markdown.
    markup: bool = False
    # Each line is one paragraph (DOCX, HTML): the cleaner joins no lines. Table rows are lines, cells ` | `-separated.
    one_per_line: bool = False


def decode_text(data: bytes) -> tuple[str, str] | None:
    """Decode bytes as text and name the encoding, or return None when they are not text.

    Order: a byte-order mark, strict UTF-8, UTF-8 with a few damaged bytes, then charset-normalizer's guesses.
    Short Chinese texts are often ambiguous between GB18030 and Big5/Korean/Japanese code pages; GB18030 wins whenever
    it decodes the bytes with no more "chaos" than the best guess, because it is what Chinese Windows and most
    mainland systems write.
    """
    for bom, encoding in (
        (b"\xef\xbb\xbf", "utf-8-sig"),
        (b"\xff\xfe\x00\x00", "utf-32"),
        (b"\x00\x00\xfe\xff", "utf-32"),
        (b"\xff\xfe", "utf-16"),
        (b"\xfe\xff", "utf-16"),
    ):
        if data.startswith(bom):
            with contextlib.suppress(UnicodeDecodeError):
                return data.decode(encoding), encoding
    with contextlib.suppress(UnicodeDecodeError):
        return data.decode("utf-8"), "utf-8"
    # A UTF-8 file with a few damaged bytes (a bad copy, a truncated last character) is still UTF-8; a detector
    # would rather guess a legacy code page and turn all of it into mojibake.
    text = data.decode("utf-8", errors="replace")
    if text.count("\ufffd") <= max(8, len(text) // 200):
        return text, "utf-8 (damaged bytes replaced)"
    from charset_normalizer import from_bytes

    matches = from_bytes(data)
    best = matches.best()
    if best is None:
        return None
    chinese = [m for m in matches if m.encoding in _CHINESE_ENCODINGS]
    if chinese and chinese[0].percent_chaos <= best.percent_chaos + 1.0:
        with contextlib.suppress(UnicodeDecodeError):
            return data.decode("gb18030"), "gb18030"
    return str(best), best.encoding
