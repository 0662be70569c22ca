"""Clean Chinese text extracted from PDFs, Markdown and TXT so that it reads like the original document.

PDF extraction hands back lines, not paragraphs: a hard line break wherever the page ran out of width (often between
two characters of one word), running headers and footers on every page, page numbers, spaces between CJK
characters, full-width digits and stray control characters. :func:`clean_pages` undoes that:

1. :func:`normalize_chars` — drop control/invalid characters, full-width letters and digits to ASCII (Chinese
   punctuation such as ，。（）：stays), Kangxi radicals and compatibility ideographs to the ordinary ideographs.
2. :func:`strip_running_lines` — drop lines that repeat at the top or bottom of most pages (the running header, a
   footer) and page-number lines (``第 N 页``, ``- 3 -``, ``3 / 20``, a bare number at the page edge).
3. :func:`join_lines` — rebuild paragraphs: a line break is a paragraph break only where the layout says so (an
   indented next line when the document indents its paragraphs, a blank line, a heading such as ``第一章 总则``,
   otherwise a line that ends a sentence); every other break is inside a sentence and is joined.
4. :func:`tidy_line` — remove the spaces extraction puts between CJK characters (``分 类 号`` → ``分类号``) while
   keeping them in English and numbers.

Chapter headings and article numbers (``第一条``) are document text and are kept. The result remembers which page
each character came from, so a chunk can name the pages it spans.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from offline_embft.core.han import HAN_IDEOGRAPHS

# CJK punctuation: ideographic symbols, full-width forms (their letters/digits are normalised away before this is
# used), and the curly quotes, dashes and ellipsis Chinese text uses.
_CJK_PUNCT = (
    "\u3001-\u303f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65\u2018\u2019\u201c\u201d\u2014\u2026\u00b7"
)
_CJK = f"{HAN_IDEOGRAPHS}{_CJK_PUNCT}"
CJK_RE = re.compile(f"[{_CJK}]")

# Spaces between two CJK characters are extraction artefacts; a lookahead keeps runs like `分 类 号` in one pass.
_CJK_SPACE_RE = re.compile(f"(?<=[{_CJK}])[ \t]+(?=[{_CJK}])")
_MULTI_SPACE_RE = re.compile(r"[ \t]{2,}")

# A structural marker at the start of a line (第一条, 第二章, 第三节): the space after it is kept for readability.
_NUM = "一二三四五六七八九十百千零〇两0-9"
_MARKER_SPACE_RE = re.compile(f"^(第[{_NUM}]+(?:[条章节编卷篇]|部分?))[ \t]+(?=\\S)")
# A heading line: 第X章/节/编... followed by a short title and no sentence punctuation.
HEADING_RE = re.compile(f"^第[{_NUM}]+(?:[章节编卷篇]|部分)(?:[ \t]*[^。；，,;！？!?]{{0,30}})?$")

# A sentence (or clause list item) ends here; closing quotes/brackets may follow the mark.
SENTENCE_END_RE = re.compile(r"[。！？；：!?;:][”’」』）》)\]]*$")
# An enumerated item (（一）, (2), 三、, 4、) starts a paragraph of its own. 第X条 does not count: a break before an
# article reference ("依照本法\n第十条规定") is far more common than an unindented article starting mid-line.
_LIST_START_RE = re.compile(r"^(?:[（(][一二三四五六七八九十\d]{1,3}[）)]|[一二三四五六七八九十]{1,3}、|\d{1,3}、)")
# Characters that cannot begin a line in Chinese typesetting: a line starting with one continues the previous line.
_NO_LINE_START = set("，。、；：！？）》」』】〕”’,.;:!?)]%％")

# Page-number lines. 第 N 页 and its variants are dropped wherever they stand as a line; bare numbers only at the top
# or bottom of a page, where a real sentence never is a lone number.
PAGE_LINE_RE = re.compile(
    rf"^(?:第\s*[{_NUM}]+\s*页(?:\s*[/，,、]?\s*共\s*[{_NUM}]+\s*页)?"
    rf"|共\s*[{_NUM}]+\s*页\s*[/，,、]?\s*第\s*[{_NUM}]+\s*页"
    r"|(?:page|p\.)\s*\d+(?:\s*(?:of|/)\s*\d+)?)$",
    re.IGNORECASE,
)
_BARE_PAGE_RE = re.compile(r"^[-–—~\s]*\d{1,4}[-–—~\s]*$|^\d{1,4}\s*/\s*\d{1,4}$")

# A line at least this share of the typical (90th percentile) line width is a wrapped, full line.
FULL_LINE_SHARE = 0.8
# How many lines at each page edge can hold a header or footer, and on what share of pages a line must repeat.
EDGE_LINES = 3
REPEAT_SHARE = 0.4

_FULLWIDTH_ALNUM = {
    **{0xFF10 + i: 0x30 + i for i in range(10)},
    **{0xFF21 + i: 0x41 + i for i in range(26)},
    **{0xFF41 + i: 0x61 + i for i in range(26)},
}
_SPACES = {ord(c): " " for c in "\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f"}
_SPACES[0x3000] = " "  # ideographic space (often paragraph indentation): a space, so indentation still reads


def _is_radical_or_compat(char: str) -> bool:
    code = ord(char)
    return (
        0x2E80 <= code <= 0x2FDF or 0xF900 <= code <= 0xFAFF or 0x2F800 <= code <= 0x2FA1F or 0xFB00 <= code <= 0xFB06
    )


def normalize_chars(text: str) -> str:
    """Normalise characters without touching Chinese punctuation.

    Full-width letters and digits become ASCII, odd spaces become a plain space, CR/CRLF become LF, tabs become a
    space; control, format (zero-width, BOM, soft hyphen), private-use, surrogate, unassigned and replacement
    characters are dropped. Kangxi radicals and CJK compatibility ideographs (PDF fonts often map 一 to ⼀) become the
    ordinary ideographs, and Latin ligatures (ﬁ) their letters.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_FULLWIDTH_ALNUM).translate(_SPACES)
    out: list[str] = []
    for char in text:
        if char in "\n\f":
            out.append(char)
            continue
        if char == "\t":
            out.append(" ")
            continue
        category = unicodedata.category(char)
        if category[0] == "C" or char == "\ufffd":  # Cc, Cf, Cs, Co, Cn
            continue
        if _is_radical_or_compat(char):
            out.append(unicodedata.normalize("NFKC", char))
            continue
        out.append(char)
    return "".join(out)


def tidy_line(line: str) -> str:
    """Strip a line, remove spaces between CJK characters and collapse other runs of spaces to one.

    A single space after a leading structural marker (``第一条 为了…``, ``第一章 总则``) is kept, as printed.
    """
    line = line.strip()
    marker = _MARKER_SPACE_RE.match(line)
    if marker:
        head, rest = marker.group(1), line[marker.end() :]
        return head + " " + _MULTI_SPACE_RE.sub(" ", _CJK_SPACE_RE.sub("", rest))
    return _MULTI_SPACE_RE.sub(" ", _CJK_SPACE_RE.sub("", line))


def _edge_key(line: str) -> str:
    """A line as a header/footer candidate: spaces removed, digits folded, so `第 3 页` and `第 4 页` agree."""
    return re.sub(r"\d+", "#", re.sub(r"\s+", "", line))


def is_page_number_line(line: str, at_edge: bool) -> bool:
    """Whether ``line`` is a page number (``第 N 页`` anywhere; a bare number only at a page's edge)."""
    stripped = line.strip()
    if not stripped:
        return False
    return bool(PAGE_LINE_RE.match(stripped) or (at_edge and _BARE_PAGE_RE.match(stripped)))


def _edge_indices(lines: Sequence[str]) -> tuple[list[int], list[int]]:
    """Indices of the first and last EDGE_LINES non-blank lines of a page."""
    filled = [i for i, line in enumerate(lines) if line.strip()]
    return filled[:EDGE_LINES], filled[-EDGE_LINES:][::-1]


def find_running_lines(pages: Sequence[Sequence[str]]) -> set[str]:
    """Keys (see :func:`_edge_key`) of lines that repeat at the top or bottom edge of most pages."""
    if len(pages) < 2:
        return set()
    counts: Counter[str] = Counter()
    for lines in pages:
        top, bottom = _edge_indices(lines)
        counts.update({_edge_key(lines[i]) for i in top + bottom})
    needed = max(2, math.ceil(REPEAT_SHARE * len(pages)))
    # A running header is short; a long line repeating on many pages would be real (if repetitive) content.
    return {key for key, n in counts.items() if n >= needed and key and len(key) <= 80}


def strip_running_lines(pages: Sequence[Sequence[str]]) -> tuple[list[list[str]], int]:
    """Remove running headers/footers and page-number lines from each page's lines.

    At each edge, a repeating line is removed once per page (its first occurrence from that edge), so a title that
    repeats the running header a line further down on page 1 stays. Bare numbers count as page numbers only in a
    document of several pages (the first line of a TXT file may well be a lone number).

    Returns:
        The pages' remaining lines, and how many lines were removed.
    """
    running = find_running_lines(pages)
    paged = len(pages) > 1
    removed = 0
    result: list[list[str]] = []
    for lines in pages:
        drop: set[int] = set()
        top, bottom = _edge_indices(lines)
        for edge in (top, bottom):
            seen: set[str] = set()
            for i in edge:
                key = _edge_key(lines[i])
                if key in running and key not in seen:
                    seen.add(key)
                    drop.add(i)
                elif is_page_number_line(lines[i], at_edge=paged):
                    drop.add(i)
        for i, line in enumerate(lines):
            if i not in drop and is_page_number_line(line, at_edge=False):
                drop.add(i)
        removed += len(drop)
        result.append([line for i, line in enumerate(lines) if i not in drop])
    return result, removed


def _width(line: str) -> int:
    """Display width: CJK characters count double, as on the page."""
    return sum(2 if CJK_RE.match(c) else 1 for c in line)


def _is_indented(line: str) -> bool:
    return line[:1].isspace()


def is_heading(line: str) -> bool:
    """A chapter/section heading line such as ``第一章 总则`` or ``第二节 一般规定``."""
    return bool(HEADING_RE.match(line.strip()))


@dataclass
class _Layout:
    """What a document's line layout tells about its paragraphs."""

    indented_paragraphs: bool
    full_width: int


def _layout(lines: Sequence[str]) -> _Layout:
    filled = [line for line in lines if line.strip()]
    if not filled:
        return _Layout(False, 0)
    indented = sum(1 for line in filled if _is_indented(line))
    # Indentation marks paragraphs only when some lines have it and others don't (extraction sometimes indents all).
    share = indented / len(filled)
    widths = sorted(_width(line.strip()) for line in filled)
    return _Layout(0.1 <= share <= 0.9 and indented >= 2, widths[round(0.9 * (len(widths) - 1))])


def _breaks_paragraph(prev: str, nxt: str, layout: _Layout) -> bool:
    """Whether the line break between two non-blank lines ends a paragraph (else it falls inside a sentence)."""
    prev_s, next_s = prev.strip(), nxt.strip()
    if next_s[0] in _NO_LINE_START:
        return False
    if is_heading(prev_s) or is_heading(next_s):
        return True
    if layout.indented_paragraphs:
        return _is_indented(nxt)
    if SENTENCE_END_RE.search(prev_s) or _LIST_START_RE.match(next_s):
        return True
    # Without indentation, a wrapped line fills the page width; one that stops short ended its paragraph (a title,
    # a last line). In a file with one paragraph per line nothing is wrapped, and the rule keeps short lines apart.
    return _width(prev_s) < FULL_LINE_SHARE * layout.full_width


def _glue(left: str, right: str) -> str:
    """What goes between two lines joined into one: nothing next to CJK or after a hyphen, else a space."""
    if not left or not right:
        return ""
    a, b = left[-1], right[0]
    if CJK_RE.match(a) or CJK_RE.match(b) or a == "-":
        return ""
    return " "


@dataclass
class CleanText:
    """Cleaned text (paragraphs separated by one newline) and the page each stretch of it came from."""

    text: str
    spans: list[tuple[int, int, int]] = field(default_factory=list)  # (start, end, page) with 1-based pages
    removed_lines: int = 0
    # (start, end, level) of the headings the document marked up (Markdown `#` lines; see clean_pages(markup=True))
    headings: list[tuple[int, int, int]] = field(default_factory=list)

    def pages_for(self, start: int, end: int) -> list[int]:
        """The 1-based pages that the text between ``start`` and ``end`` comes from (in order, no repeats)."""
        pages: list[int] = []
        for span_start, span_end, page in self.spans:
            if span_start < end and span_end > start and page not in pages:
                pages.append(page)
        return pages


def join_lines(
    lines: Sequence[tuple[int, str]], levels: dict[int, int] | None = None, one_per_line: bool = False
) -> CleanText:
    """Rebuild paragraphs from ``(page, line)`` pairs; lines broken inside a sentence are joined.

    Blank lines always separate paragraphs; a page boundary does not (sentences run on across pages).

    Args:
        lines: The lines with their 1-based pages.
        levels: Line index → heading level for the lines that are marked-up headings: each is a paragraph of its
            own, and its place is recorded in the result's ``headings``.
        one_per_line: Every line is a paragraph already (text read from a DOCX or HTML, where the document says
            where paragraphs end): nothing is joined.
    """
    levels = levels or {}
    layout = _layout([line for i, (_, line) in enumerate(lines) if i not in levels])
    paragraphs: list[tuple[int | None, list[tuple[int, str]]]] = []
    current: list[tuple[int, str]] = []
    prev_raw = ""
    for index, (page, raw) in enumerate(lines):
        if not raw.strip() or index in levels:
            if current:
                paragraphs.append((None, current))
                current = []
            if raw.strip():
                paragraphs.append((levels[index], [(page, raw)]))
            prev_raw = ""
            continue
        if current and (one_per_line or _breaks_paragraph(prev_raw, raw, layout)):
            paragraphs.append((None, current))
            current = []
        current.append((page, raw))
        prev_raw = raw
    if current:
        paragraphs.append((None, current))

    parts: list[str] = []
    spans: list[tuple[int, int, int]] = []
    headings: list[tuple[int, int, int]] = []
    offset = 0
    for level, paragraph in paragraphs:
        text = ""
        for page, raw in paragraph:
            piece = tidy_line(raw)
            if not piece:
                continue
            glue = _glue(text, piece)
            start = offset + len(text) + len(glue)
            text += glue + piece
            spans.append((start, offset + len(text), page))
        if not text:
            continue
        if parts:
            offset += 1  # the newline between paragraphs
        if level is not None:
            headings.append((offset, offset + len(text), level))
        parts.append(text)
        offset += len(text)
    return CleanText("\n".join(parts), _merge_spans(spans), headings=headings)


def _merge_spans(spans: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    merged: list[tuple[int, int, int]] = []
    for start, end, page in spans:
        if merged and merged[-1][2] == page:
            merged[-1] = (merged[-1][0], end, page)
        else:
            merged.append((start, end, page))
    return merged


# A Markdown heading line, as loaders write headings (markup=True): `#` × level, a space, the title.
MARKDOWN_HEADING_RE = re.compile(r"^(#{1,6})[ \t]+(\S.*?)[ \t]*$")


def clean_pages(pages: Sequence[str], markup: bool = False, one_per_line: bool = False) -> CleanText:
    """Clean a document given as the text of each page (a TXT or Markdown file is one page, or is split at form
    feeds by the caller). Returns the cleaned text with its page spans (1-based).

    Args:
        pages: Each page's raw text.
        markup: Lines ``# Title`` … ``###### Title`` are headings the document marked up: each becomes a paragraph
            without its ``#`` marks, and its place and level are recorded in ``headings``.
        one_per_line: Each line is already a paragraph (DOCX, HTML): no line is joined to the next.
    """
    # Blank lines at a page's edges say nothing about paragraphs: a sentence runs on onto the next page.
    page_lines = [normalize_chars(page).replace("\f", "\n").strip("\n").split("\n") for page in pages]
    page_lines, removed = strip_running_lines(page_lines)
    numbered = [(number, line) for number, lines in enumerate(page_lines, start=1) for line in lines]
    levels: dict[int, int] = {}
    if markup:
        for index, (number, line) in enumerate(numbered):
            heading = MARKDOWN_HEADING_RE.match(line.strip())
            if heading:
                levels[index] = len(heading.group(1))
                numbered[index] = (number, heading.group(2))
    result = join_lines(numbered, levels, one_per_line)
    result.removed_lines = removed
    return result


def clean_text(text: str) -> str:
    """Clean one text (form feeds, if any, separate its pages) and return the cleaned string."""
    return clean_pages(text.split("\f")).text
