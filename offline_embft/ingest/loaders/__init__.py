"""Read PDF, DOCX, HTML, Markdown and TXT files into raw page texts, or say precisely why a file can't be read.

A folder of real documents always holds a few bad ones: a password-protected PDF, a scan without a text layer, a
truncated download, an empty file, a Word file renamed to .pdf. Each is classified (:class:`SkipReason`) with a
reason a user can act on, so ingestion skips it, reports it, and goes on with the rest.

Chinese TXT files often come in GBK/GB18030 rather than UTF-8; :func:`decode_text` detects the encoding (BOM,
strict UTF-8, then charset-normalizer, preferring GB18030 — the superset of GB2312 and GBK — when it fits as well as
the best guess).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path

from offline_embft.ingest.loaders.raw_document import LoadError, RawDocument, SkipReason, decode_text

logger = logging.getLogger(__name__)

SUFFIXES = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".html": "html",
    ".htm": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
}
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


def load(path: Path) -> RawDocument:
    """Read one file by its suffix.

    Raises:
        LoadError: the file is empty, encrypted, corrupt, image-only, has no text, is misnamed or unsupported.
    """
    suffix = path.suffix.lower()
    kind = SUFFIXES.get(suffix)
    if suffix in NEEDS_CONVERSION:
        command = _CONVERT.format(target=NEEDS_CONVERSION[suffix], name=path.name)
        raise LoadError(
            SkipReason.needs_conversion,
            f"{suffix} files are not read; convert it with LibreOffice first: {command}",
        )
    if kind is None:
        supported = ", ".join(sorted(SUFFIXES))
        raise LoadError(SkipReason.unsupported, f"unsupported file type {path.suffix or '(none)'} ({supported})")
    try:
        if path.stat().st_size == 0:
            raise LoadError(SkipReason.empty, "empty file (0 bytes)")
        if kind == "pdf":
            return load_pdf(path)
        if kind == "docx":
            from offline_embft.ingest.loaders.docx import load_docx

            return load_docx(path)
        if kind == "html":
            from offline_embft.ingest.loaders.html import load_html

            return load_html(path)
        return load_text(path, kind)
    except OSError as exc:
        message = f"cannot read the file ({exc.strerror or exc}); check its permissions"
        raise LoadError(SkipReason.unreadable, message) from None


# ---------------------------------------------------------------------------------------------------------------
# Text and Markdown


def _looks_like_text(text: str) -> bool:
    """Mostly printable characters (a binary file decoded by luck is full of control characters)."""
    if not text:
        return False
    sample = text[:20000]
    bad = sum(1 for c in sample if ord(c) < 32 and c not in "\n\r\t\f")
    return bad / len(sample) < 0.01


def _magic(head: bytes) -> str | None:
    """What a file's first bytes say it is: 'PDF', a name from _MAGIC, or None (no known signature)."""
    if b"%PDF-" in head[:1024]:
        return "PDF"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


def _as_text(data: bytes) -> tuple[str, str] | None:
    """The decoded text and its encoding when ``data`` is text, else None."""
    if b"\x00" in data[:4096] and not data.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")):
        return None  # NUL bytes: binary (UTF-16 text without a BOM is too rare to guess at)
    decoded = decode_text(data)
    return decoded if decoded and _looks_like_text(decoded[0]) else None


def load_text(path: Path, kind: str) -> RawDocument:
    """Read a TXT or Markdown file in whatever encoding it is in; form feeds split it into pages for cleaning."""
    data = path.read_bytes()
    if not data.strip():
        raise LoadError(SkipReason.empty, "empty file (only whitespace)")
    what = _magic(data[:1024])
    if what == "PDF":
        raise LoadError(SkipReason.misnamed, f"misnamed: this {path.suffix} file is a PDF; rename it to .pdf")
    if what is not None:
        raise LoadError(SkipReason.misnamed, f"misnamed: this {path.suffix} file is {what}, not text")
    decoded = _as_text(data)
    if decoded is None:
        raise LoadError(SkipReason.misnamed, f"misnamed: this {path.suffix} file is binary data, not text")
    text, encoding = decoded
    if kind == "markdown":
        text = markdown_to_text(text)
    if not text.strip():
        raise LoadError(SkipReason.empty, "empty file (no text)")
    return RawDocument(path, kind, text.split("\f"), paged=False, encoding=encoding, markup=kind == "markdown")


_MD_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.DOTALL)
_MD_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_MD_LIST = re.compile(r"^\s*(?:[-*+]\s+|(\d+[.)])\s+)")
_MD_RULE = re.compile(r"^\s{0,3}(?:[-*_]\s*){3,}$")
_MD_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(?:\|\s*:?-{3,}:?\s*)*\|?\s*$")
_MD_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_MD_HTML = re.compile(r"<[^>\n]+>")
_MD_EMPHASIS = re.compile(r"(\*\*|__|~~|`)")


def markdown_to_text(text: str) -> str:
    """Plain text from Markdown: markup removed, and headings, list items and table rows made paragraphs of their
    own (a blank line around each), so the line joiner never glues a heading to the sentence after it. Headings stay
    Markdown heading lines (``## Title``): the cleaner records them as the document's outline."""
    text = _MD_FRONT_MATTER.sub("", text.replace("\r\n", "\n"))
    out: list[str] = []
    for line in text.split("\n"):
        if line.strip().startswith("```") or _MD_RULE.match(line) or _MD_TABLE_SEP.match(line):
            out.append("")
            continue
        line = _MD_EMPHASIS.sub("", _MD_HTML.sub("", _MD_LINK.sub(r"\1", _MD_IMAGE.sub("", line))))
        line = re.sub(r"^\s*>\s?", "", line)
        heading = _MD_HEADING.match(line)
        if heading:
            out.extend(["", f"{heading.group(1)} {heading.group(2)}" if heading.group(2) else "", ""])
            continue
        listed = _MD_LIST.match(line)
        if listed:
            number = listed.group(1)
            out.extend(["", (number + " " if number else "") + line[listed.end() :]])
            continue
        if line.strip().startswith("|") and line.strip().endswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            out.extend(["", " | ".join(c for c in cells if c), ""])
            continue
        out.append(line)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------------
# PDF


@contextlib.contextmanager
def _quiet_pypdf() -> Iterator[None]:
    """pypdf logs a warning per damaged object it works around; one summary line per file is enough for users."""
    pypdf_logger = logging.getLogger("pypdf")
    level = pypdf_logger.level
    pypdf_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        pypdf_logger.setLevel(level)


def _has_images(page) -> bool:
    """Whether a page draws any image (directly or inside a form XObject)."""

    def walk(resources, depth: int) -> bool:
        if resources is None or depth > 3:
            return False
        xobjects = resources.get("/XObject")
        if xobjects is None:
            return False
        xobjects = xobjects.get_object()
        for name in xobjects:
            obj = xobjects[name].get_object()
            subtype = obj.get("/Subtype")
            if subtype == "/Image":
                return True
            if subtype == "/Form" and walk(obj.get("/Resources"), depth + 1):
                return True
        return False

    try:
        resources = page.get("/Resources")
        return walk(resources.get_object() if resources is not None else None, 0)
    except Exception:  # a damaged resource dictionary: we only wanted a better message
        return False


def load_pdf(path: Path) -> RawDocument:
    """Extract each page's text with pypdf.

    An owner-password-only PDF (opens without a password, only "protected" against editing) is read: pypdf decrypts
    it with the empty user password. Pages without a text layer are skipped with a note; a PDF where no page has
    text is refused as image-only (scanned) or as having no text.
    """
    from pypdf import PdfReader
    from pypdf.errors import DependencyError

    with open(path, "rb") as handle:
        head = handle.read(1024)
    what = _magic(head)
    if what != "PDF":
        if what is None and _as_text(path.read_bytes()[:65536]) is not None:
            raise LoadError(SkipReason.misnamed, "misnamed: this .pdf file is plain text; rename it to .txt")
        what = what or "binary data"
        raise LoadError(SkipReason.misnamed, f"misnamed or corrupt: not a PDF (no %PDF header), it is {what}")

    with _quiet_pypdf():
        try:
            reader = PdfReader(path, strict=False)
            if reader.is_encrypted:
                try:
                    opened = reader.decrypt("")
                except (DependencyError, NotImplementedError) as exc:
                    raise LoadError(
                        SkipReason.encrypted, f"encrypted PDF this machine cannot decrypt ({exc}); export a copy"
                    ) from None
                if not opened:
                    raise LoadError(
                        SkipReason.encrypted,
                        "encrypted PDF (password required); save an unprotected copy (e.g. qpdf --decrypt)",
                    )
            pages = list(reader.pages)
        except LoadError:
            raise
        except Exception as exc:  # pypdf on a damaged file can raise almost anything; one bad file must not stop all
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise LoadError(SkipReason.corrupt, f"corrupt PDF ({detail}); re-export or re-download it") from None

        if not pages:
            raise LoadError(SkipReason.corrupt, "corrupt PDF: no pages could be read; re-export or re-download it")
        texts: list[str] = []
        failed = image_pages = 0
        for page in pages:
            try:
                text = page.extract_text() or ""
            except Exception:  # a damaged page: count it and read the others
                failed += 1
                text = ""
            if not text.strip() and _has_images(page):
                image_pages += 1
            texts.append(text)

    if not any(t.strip() for t in texts):
        if image_pages:
            raise LoadError(
                SkipReason.image_only,
                "image-only PDF (scanned, no text layer); run OCR first, e.g. ocrmypdf -l chi_sim in.pdf out.pdf",
            )
        if failed == len(pages):
            raise LoadError(SkipReason.corrupt, "corrupt PDF: no page could be decoded; re-export or re-download it")
        raise LoadError(SkipReason.no_text, "PDF without extractable text")
    notes = []
    if image_pages:
        notes.append(f"{image_pages} of {len(pages)} pages are images without a text layer (not read; OCR them)")
    if failed:
        notes.append(f"{failed} of {len(pages)} pages could not be decoded")
    return RawDocument(path, "pdf", texts, paged=True, notes=notes)
