"""PDF files: each page's text layer through pypdf; owner-locked PDFs are read, password-protected, scanned
(image-only), damaged and misnamed ones are refused with what to do about them."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from offline_embft.core.errors import first_line
from offline_embft.ingest.loaders.raw_document import LoadError, RawDocument, SkipReason, as_text, sniff


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
    what = sniff(head)
    if what != "PDF":
        if what is None and as_text(path.read_bytes()[:65536]) is not None:
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
            detail = first_line(exc)
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
