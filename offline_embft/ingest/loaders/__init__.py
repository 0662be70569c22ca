"""Read PDF, DOCX, HTML, Markdown and TXT files into raw page texts, or say precisely why a file can't be read.

The loaders are registered by suffix (:func:`register_loader`, one line per format below); each format lives in its
own module beside this one (``pdf``, ``text``, ``docx``, ``html``), and a new format is one module plus one line.

A folder of real documents always holds a few bad ones: a password-protected PDF, a scan without a text layer, a
truncated download, an empty file, a Word file renamed to .pdf. Each is classified (:class:`SkipReason`) with a
reason a user can act on, so ingestion skips it, reports it, and goes on with the rest.

Chinese TXT files often come in GBK/GB18030 rather than UTF-8; :func:`decode_text` detects the encoding (BOM,
strict UTF-8, then charset-normalizer, preferring GB18030 — the superset of GB2312 and GBK — when it fits as well as
the best guess).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

from offline_embft.ingest.loaders.docx import load_docx
from offline_embft.ingest.loaders.html import load_html
from offline_embft.ingest.loaders.pdf import load_pdf
from offline_embft.ingest.loaders.raw_document import LoadError, RawDocument, SkipReason, decode_text
from offline_embft.ingest.loaders.text import load_text, markdown_to_text

logger = logging.getLogger(__name__)

Loader = Callable[[Path], RawDocument]  # reads one file, or raises LoadError saying why it can't

LOADERS: dict[str, Loader] = {}  # suffix (lower case, with its dot) → the loader of that format
SUFFIXES: dict[str, str] = {}  # suffix → the kind of document it is ("pdf", "markdown", ...)


def register_loader(loader: Loader, kind: str, *suffixes: str) -> Loader:
    """Read files with these ``suffixes`` (``".md"``) with ``loader``; they are documents of ``kind``. A suffix
    registered again gets the new loader. Returns ``loader``."""
    for suffix in suffixes:
        LOADERS[suffix.lower()] = loader
        SUFFIXES[suffix.lower()] = kind
    return loader


# The formats ingest reads, one line each: a new format is one module with its loader plus one line here.
register_loader(load_pdf, "pdf", ".pdf")
register_loader(load_docx, "docx", ".docx")
register_loader(load_html, "html", ".html", ".htm")
register_loader(functools.partial(load_text, kind="markdown"), "markdown", ".md", ".markdown")
register_loader(functools.partial(load_text, kind="text"), "text", ".txt")

__all__ = [
    "LOADERS",
    "NEEDS_CONVERSION",
    "SUFFIXES",
    "LoadError",
    "Loader",
    "RawDocument",
    "SkipReason",
    "decode_text",
    "load",
    "load_docx",
    "load_html",
    "load_pdf",
    "load_text",
    "markdown_to_text",
    "register_loader",
]
# Office formats that are not read, and the LibreOffice command that turns each into one that is.
_CONVERT = 'soffice --headless --convert-to {target} "{name}"'
NEEDS_CONVERSION = {
    ".doc": "docx",
    ".wps": "docx",
    ".rtf": "docx",
    ".odt": "docx",
    ".xlsx": "html",
    ".xls": "html",
    ".et": "html",
    ".ods": "html",
    ".pptx": "pdf",
    ".ppt": "pdf",
    ".dps": "pdf",
    ".odp": "pdf",
}


def load(path: Path) -> RawDocument:
    """Read one file with the loader registered for its suffix.

    Raises:
        LoadError: the file is empty, encrypted, corrupt, image-only, has no text, is misnamed or unsupported.
    """
    suffix = path.suffix.lower()
    loader = LOADERS.get(suffix)
    if suffix in NEEDS_CONVERSION:
        command = _CONVERT.format(target=NEEDS_CONVERSION[suffix], name=path.name)
        raise LoadError(
            SkipReason.needs_conversion,
            f"{suffix} files are not read; convert it with LibreOffice first: {command}",
        )
    if loader is None:
        supported = ", ".join(sorted(SUFFIXES))
        raise LoadError(SkipReason.unsupported, f"unsupported file type {path.suffix or '(none)'} ({supported})")
    try:
        if path.stat().st_size == 0:
            raise LoadError(SkipReason.empty, "empty file (0 bytes)")
        return loader(path)
    except OSError as exc:
        message = f"cannot read the file ({exc.strerror or exc}); check its permissions"
        raise LoadError(SkipReason.unreadable, message) from None
