"""Read an HTML page (saved from an intranet portal, or exported by Word, WPS or LibreOffice) into one paragraph a
line, headings as Markdown heading lines and tables a row a line.

Parsed with BeautifulSoup on lxml. What is kept and what is not:

- **Encoding**: a byte-order mark, else UTF-8 when the bytes are valid UTF-8, else the charset the page declares
  (``<meta charset>``, ``http-equiv``; GB2312 and GBK are read as GB18030, their superset), else detection
  (:func:`offline_embft.ingest.loaders.raw_document.decode_text`).
- **Main text**: ``<main>`` or a single ``<article>`` when the page has one, else ``<body>``. Dropped: scripts,
  styles, forms, ``<nav>``/``<header>``/``<footer>``/``<aside>`` and their ARIA roles, elements named as navigation
  (class or id ``nav``, ``menu``, ``breadcrumb``, ``sidebar``, …), hidden elements, HTML comments (Word and
  LibreOffice put review comments there), running headers and footers of office exports (LibreOffice's
  ``<div title="header">``, Word's ``mso-element:header``) and text frames (LibreOffice's ``Frame`` spans).
- **Structure**: ``<h1>``–``<h6>`` → ``#`` lines; block elements (p, div, li, …) and ``<br>`` end a line; items of
  an ordered list get their number (``1.``, ``a.``, ``i.`` as the list's ``type`` and ``start`` say); tables a row a
  line, cells `` | ``-separated (a merged cell appears once, as HTML has it), empty cells left out. A table that
  lays out the page (a cell holds headings, lists or another table) is read as the blocks it holds.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from offline_embft.ingest.loaders.raw_document import LoadError, RawDocument, SkipReason, decode_text

_DECLARED = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_\-]+)""", re.IGNORECASE)
_GB = {"gb2312", "gbk", "gb18030", "x-gbk", "cp936", "euc-cn", "hz-gb-2312"}
_DROP_TAGS = ("script", "style", "noscript", "template", "iframe", "svg", "canvas", "form", "button", "select", "head")
_LANDMARKS = ("nav", "header", "footer", "aside")
_DROP_ROLES = {"navigation", "banner", "contentinfo", "complementary", "search", "menu", "menubar"}
# A class or id token that names page furniture: nav, main-menu, breadcrumb, sidebar_left, pagination, site-footer …
_NAV_TOKEN = re.compile(
    r"^(?:[a-z]+[-_])?(?:nav|navbar|navigation|menu|menubar|breadcrumbs?|crumbs?|sidebar|sidenav|toolbar|pager|"
    r"pagination|copyright|share|social)(?:[-_][a-z0-9]+)?$|^(?:site|page|global|top|bottom)?[-_]?(?:header|footer)$",
    re.IGNORECASE,
)
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden|mso-element\s*:\s*(?:header|footer)", re.I)
_FRAME_ID = re.compile(r"^Frame\d+$")
_LAYOUT_BLOCKS = ["h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "blockquote"]
BLOCKS = {
    "p", "div", "section", "article", "main", "li", "dd", "dt", "dl", "ul", "ol", "blockquote", "pre", "address",
    "figure", "figcaption", "table", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "center", "body", "hr", "caption",
}  # fmt: skip


def decode_html(data: bytes) -> tuple[str, str]:
    """The page's text and encoding: a BOM; else UTF-8 when the bytes are valid UTF-8 (a page re-saved as UTF-8
    often keeps its old ``charset=gb2312`` line, and GB18030 would decode those bytes into nonsense without an
    error, while real GBK text is practically never valid UTF-8); else the declared charset; else detection.

    Raises:
        LoadError: the bytes are not text in any encoding.
    """
    if not data.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            pass
        declared = _DECLARED.search(data[:8192])
        if declared:
            name = declared.group(1).decode("ascii", "ignore").lower()
            encoding = "gb18030" if name in _GB else name
            try:
                return data.decode(encoding), encoding
            except (LookupError, UnicodeDecodeError):
                pass  # a wrong or unknown declaration: detect instead
    decoded = decode_text(data)
    if decoded is None:
        raise LoadError(SkipReason.misnamed, "misnamed: this HTML file is binary data, not text")
    return decoded


def _ordinal(n: int, kind: str) -> str:
    if kind in ("a", "A"):
        label = chr(ord("a") + (n - 1) % 26) * ((n - 1) // 26 + 1)
        return label.upper() if kind == "A" else label
    if kind in ("i", "I"):
        out, value = "", n
        for number, numeral in ((1000, "m"), (900, "cm"), (500, "d"), (400, "cd"), (100, "c"), (90, "xc")):
            while value >= number:
                out, value = out + numeral, value - number
        for number, numeral in ((50, "l"), (40, "xl"), (10, "x"), (9, "ix"), (5, "v"), (4, "iv"), (1, "i")):
            while value >= number:
                out, value = out + numeral, value - number
        return out.upper() if kind == "I" else out
    return str(n)


class _Writer:
    """Collects the lines of a page's main content."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.current: list[str] = []
        self.label = ""  # a list item's number, for the first line the item writes

    def text(self, value: str) -> None:
        self.current.append(value)

    def end_line(self, prefix: str = "") -> None:
        line = re.sub(r"\s+", " ", "".join(self.current)).strip()
        self.current = []
        if line:
            self.lines.append(prefix + self.label + line)
            self.label = ""

    def walk(self, node: Any) -> None:
        from bs4 import Comment, NavigableString, Tag

        for child in node.children:
            if isinstance(child, Comment):
                continue
            if isinstance(child, NavigableString):
                if type(child) is NavigableString:  # not a CData/Doctype/ProcessingInstruction
                    self.text(str(child))
                continue
            if not isinstance(child, Tag):
                continue
            name = child.name
            if name == "br":
                self.end_line()
            elif name in ("h1", "h2", "h3", "h4", "h5", "h6"):
                self.end_line()
                self.walk(child)
                self.end_line("#" * int(name[1]) + " ")
            elif name == "table" and _is_layout_table(child):
                self.end_line()
                self.walk(child)  # a page laid out with a table: its cells are blocks of the page
                self.end_line()
            elif name == "table":
                self.end_line()
                self.table(child)
            elif name == "ol":
                self.end_line()
                self.ordered_list(child)
            elif name == "pre":
                self.end_line()
                for line in child.get_text().split("\n"):
                    self.text(line)
                    self.end_line()
            elif name in BLOCKS:
                self.end_line()
                self.walk(child)
                self.end_line()
            else:
                self.walk(child)

    def ordered_list(self, ol: Any) -> None:
        start = ol.get("start", "1")
        number = int(start) if str(start).lstrip("-").isdigit() else 1
        kind = ol.get("type", "1")
        for child in ol.children:
            if getattr(child, "name", None) != "li":
                if getattr(child, "name", None):
                    self.walk(child)
                continue
            value = child.get("value")
            if value and str(value).isdigit():
                number = int(value)
            self.end_line()
            self.label = f"{_ordinal(number, kind)}. "
            self.walk(child)
            self.end_line()
            self.label = ""
            number += 1

    def table(self, table: Any) -> None:
        for row in table.find_all("tr"):
            if row.find_parent("table") is not table:
                continue  # a nested table's rows are text of the cell that holds it
            cells = []
            for cell in row.find_all(["td", "th"], recursive=False):
                text = re.sub(r"\s+", " ", cell.get_text(" ")).strip()
                if text:
                    cells.append(text)
            if cells:
                self.lines.append(" | ".join(cells))


def _is_layout_table(table: Any) -> bool:
    """A table that lays out a page (old portals put the whole article in one) rather than holding data: a cell
    holds headings, paragraphs, lists or another table."""
    for cell in table.find_all(["td", "th"]):
        if cell.find_parent("table") is table and cell.find(_LAYOUT_BLOCKS):
            return True
    return False


def _is_chrome(tag: Any) -> bool:
    """Navigation, page furniture, hidden elements and office running headers/footers/text frames."""
    if tag.attrs is None:
        return False
    if tag.name in _LANDMARKS:
        return True
    if (tag.get("role") or "").lower() in _DROP_ROLES or tag.has_attr("hidden") or tag.get("aria-hidden") == "true":
        return True
    if tag.get("title") in ("header", "footer") and tag.name == "div":  # LibreOffice's running header/footer
        return True
    if _HIDDEN_STYLE.search(tag.get("style") or ""):
        return True
    tag_id = tag.get("id") or ""
    if _FRAME_ID.match(tag_id):  # LibreOffice's text boxes and frames
        return True
    return any(_NAV_TOKEN.match(token) for token in [*(tag.get("class") or []), *tag_id.split()])


def html_lines(html: str) -> list[str]:
    """The main content of an HTML document as lines (see the module docstring)."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "lxml")
    for tag in soup.find_all(_DROP_TAGS):
        tag.decompose()
    for tag in [t for t in soup.find_all(True) if _is_chrome(t)]:
        if not tag.decomposed:
            tag.decompose()
    root = soup.find("main")
    articles = soup.find_all("article")
    if root is None and len(articles) == 1:
        root = articles[0]
    root = root or soup.body or soup
    writer = _Writer()
    writer.walk(root)
    writer.end_line()
    return writer.lines


def load_html(path: Path) -> RawDocument:
    """Read an HTML file (see the module docstring for what is kept).

    Raises:
        LoadError: the file is not text, or has no text once navigation and scripts are removed.
    """
    data = path.read_bytes()
    if not data.strip():
        raise LoadError(SkipReason.empty, "empty file (only whitespace)")
    html, encoding = decode_html(data)
    lines = html_lines(html)
    if not any(line.lstrip("# ").strip() for line in lines):
        raise LoadError(SkipReason.no_text, "HTML page without text (only navigation, scripts or images)")
    return RawDocument(
        path, "html", ["\n".join(lines)], paged=False, encoding=encoding, markup=True, one_per_line=True
    )
