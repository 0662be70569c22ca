"""What a loader returns, and how it fails: :class:`RawDocument`, :class:`LoadError` with its :class:`SkipReason`,
:func:`decode_text` for bytes of unknown encoding, and :func:`sniff` / :func:`as_text` for what a misnamed file
really is. Shared by the registry in :mod:`offline_embft.ingest.loaders` and the format loaders it dispatches to
(``pdf``, ``text``, ``docx``, ``html`` beside it), which import it from here rather than from their dispatcher."""

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


# ---------------------------------------------------------------------------------------------------------------
# What a file's bytes really are (for the loaders' "misnamed" messages)

# File signatures, to name what a misnamed file really is.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a ZIP archive (DOCX/XLSX/PPTX?)"),
    (b"\xd0\xcf\x11\xe0", "a legacy Microsoft Office file (DOC/XLS?)"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"{\\rtf", "an RTF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
)


def looks_like_text(text: str) -> bool:
    """Mostly printable characters (a binary file decoded by luck is full of control characters)."""
    if not text:
        return False
    sample = text[:20000]
    bad = sum(1 for c in sample if ord(c) < 32 and c not in "\n\r\t\f")
    return bad / len(sample) < 0.01


def sniff(head: bytes) -> str | None:
    """What a file's first bytes say it is: 'PDF', a name from _MAGIC, or None (no known signature)."""
    if b"%PDF-" in head[:1024]:
        return "PDF"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


def as_text(data: bytes) -> tuple[str, str] | None:
    """The decoded text and its encoding when ``data`` is text, else None."""
    if b"\x00" in data[:4096] and not data.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")):
        return None  # NUL bytes: binary (UTF-16 text without a BOM is too rare to guess at)
    decoded = decode_text(data)
    return decoded if decoded and looks_like_text(decoded[0]) else None
