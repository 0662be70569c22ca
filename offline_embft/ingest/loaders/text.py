"""TXT and Markdown files: decoded in whatever encoding they are in (GBK/GB18030 included), Markdown made plain
text with its headings kept as the document's outline; form feeds split a file into pages for cleaning."""

from __future__ import annotations

import re
from pathlib import Path

from offline_embft.ingest.loaders.raw_document import LoadError, RawDocument, SkipReason, as_text, sniff


def load_text(path: Path, kind: str) -> RawDocument:
    """Read a TXT or Markdown file in whatever encoding it is in; form feeds split it into pages for cleaning."""
    data = path.read_bytes()
    if not data.strip():
        raise LoadError(SkipReason.empty, "empty file (only whitespace)")
    what = sniff(data[:1024])
    if what == "PDF":
        raise LoadError(SkipReason.misnamed, f"misnamed: this {path.suffix} file is a PDF; rename it to .pdf")
    if what is not None:
        raise LoadError(SkipReason.misnamed, f"misnamed: this {path.suffix} file is {what}, not text")
    decoded = as_text(data)
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
