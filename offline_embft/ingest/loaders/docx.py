"""Read a Word document (.docx) into text the rest of ingest understands: one paragraph a line, headings as
Markdown heading lines, tables a row a line.

python-docx opens the package and resolves styles; the body is walked here, in reading order, because its own
``Paragraph.text`` misses runs inside tracked insertions, content controls and simple fields, and LlamaIndex's and
LangChain's DOCX readers (docx2txt) flatten headings, tables and numbering away. What is kept and what is not:

- **Paragraphs** in document order, including those in content controls (a table of contents control is skipped:
  its lines repeat the headings); tracked insertions are read, tracked deletions are not; a line break inside a
  paragraph starts a new line.
- **Headings**: Word's ``Title`` style → ``#``, ``Heading N`` (``标题 N``, or any style or paragraph with outline
  level N) → ``#`` × (N + 1). Numbered titles typed as plain paragraphs (第一章, 第一条, 1.2.3) are left to
  :mod:`offline_embft.ingest.structure`, which recognises them in any text.
- **Numbering** that Word draws (auto-numbered lists and headings) is rendered as Word shows it: ``1.``, ``(1)``,
  ``第一章``, ``一、``, ``a)``, ``①`` …; bullets are dropped.
- **Tables**: one row a line, cells separated by `` | ``, a merged cell once (in its first row and column), empty
  cells left out; text in a cell's paragraphs and nested tables joined with spaces.
- **Not read**: running headers and footers (page headers such as "内部资料 注意保密", page numbers), text boxes
  and shapes, comments, footnotes and endnotes, field codes (their visible result is read).

A password-protected .docx is an OLE container holding an encrypted package, not a ZIP: it is refused as
``encrypted``; a ZIP without a Word document, or a damaged one, as ``corrupt``.
"""

from __future__ import annotations

import logging
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offline_embft.core.errors import first_line
from offline_embft.ingest.loaders.raw_document import LoadError, RawDocument, SkipReason

logger = logging.getLogger(__name__)

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_MC = "{http://schemas.openxmlformats.org/markup-compatibility/2006}"
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ENCRYPTED_STREAM = "EncryptedPackage".encode("utf-16-le")
# Subtrees whose text is not body text: drawings and text boxes (and their VML twins), embedded objects, tracked
# deletions and moved-away text, and the properties elements.
_SKIP = {
    f"{_W}drawing",
    f"{_W}pict",
    f"{_W}object",
    f"{_MC}AlternateContent",
    f"{_W}del",
    f"{_W}moveFrom",
    f"{_W}rPr",
    f"{_W}pPr",
    f"{_W}footnoteReference",
    f"{_W}endnoteReference",
    f"{_W}commentReference",
}
_HEADING_STYLE = re.compile(r"^(?:heading|标题)\s*([1-9])$", re.IGNORECASE)
_TITLE_STYLE = re.compile(r"^(?:title|标题)$", re.IGNORECASE)


def _val(element: Any, tag: str) -> str | None:
    """The ``w:val`` of ``element``'s child ``tag`` (None when either is missing)."""
    if element is None:
        return None
    child = element.find(f"{_W}{tag}")
    return None if child is None else child.get(f"{_W}val")


# ---------------------------------------------------------------------------------------------------------------
# Numbering: what Word draws in front of an auto-numbered paragraph

_DIGITS = "零一二三四五六七八九"
_TIANGAN = "甲乙丙丁戊己庚辛壬癸"


def chinese_number(n: int) -> str:
    """1 → 一, 10 → 十, 21 → 二十一, 105 → 一百零五 (Word's chineseCounting, up to 9999)."""
    if n <= 0 or n >= 10000:
        return str(n)
    if n < 10:
        return _DIGITS[n]
    if n < 20:
        return "十" + (_DIGITS[n - 10] if n > 10 else "")
    out, zero = "", False
    for value, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        digit = n // value % 10
        if digit:
            if zero and out:
                out += "零"
            out += _DIGITS[digit] + unit
            zero = False
        elif out:
            zero = True
    return out


def _roman(n: int) -> str:
    out = ""
    for value, numeral in (
        (1000, "M"),
        (900, "CM"),
        (500, "D"),
        (400, "CD"),
        (100, "C"),
        (90, "XC"),
        (50, "L"),
        (40, "XL"),
        (10, "X"),
        (9, "IX"),
        (5, "V"),
        (4, "IV"),
        (1, "I"),
    ):
        while n >= value:
            out += numeral
            n -= value
    return out


def _letters(n: int) -> str:
    # Word repeats the letter: a … z, aa … zz, aaa …
    return chr(ord("a") + (n - 1) % 26) * ((n - 1) // 26 + 1)


_CHINESE_COUNTING = {
    "chineseCounting",
    "chineseCountingThousand",
    "taiwaneseCounting",
    "taiwaneseCountingThousand",  # what LibreOffice writes for 一、二、三
    "japaneseCounting",
}
_LEGAL = str.maketrans("一二三四五六七八九十百千", "壹贰叁肆伍陆柒捌玖拾佰仟")
_ZODIAC = "子丑寅卯辰巳午未申酉戌亥"


def format_number(n: int, fmt: str) -> str:
    """A counter value in one of Word's number formats (``w:numFmt``); unknown formats fall back to decimal."""
    if fmt in _CHINESE_COUNTING:
        return chinese_number(n)
    if fmt == "chineseLegalSimplified":
        return chinese_number(n).translate(_LEGAL)
    if fmt in ("ideographDigital", "taiwaneseDigital"):
        return "".join("〇一二三四五六七八九"[int(d)] for d in str(n))
    if fmt == "ideographTraditional" and 1 <= n <= 10:
        return _TIANGAN[n - 1]
    if fmt == "ideographZodiac" and 1 <= n <= 12:
        return _ZODIAC[n - 1]
    if fmt == "decimalEnclosedCircle" and 1 <= n <= 20:
        return chr(0x2460 + n - 1)
    if fmt in ("decimalEnclosedParen",):
        return f"({n})"
    if fmt == "decimalZero":
        return f"{n:02d}"
    if fmt == "decimalFullWidth":
        return "".join(chr(ord(c) + 0xFEE0) for c in str(n))
    if fmt == "upperRoman":
        return _roman(n)
    if fmt == "lowerRoman":
        return _roman(n).lower()
    if fmt == "upperLetter":
        return _letters(n).upper()
    if fmt == "lowerLetter":
        return _letters(n)
    if fmt in ("none", "bullet"):
        return ""
    return str(n)


# Word 2010+ writes formats older readers lack as a custom format inside mc:AlternateContent (decimal as fallback):
# the first number of the custom format tells which it is.
_CUSTOM_FORMATS = {
    "一": "chineseCounting",
    "壹": "chineseLegalSimplified",
    "甲": "ideographTraditional",
    "①": "decimalEnclosedCircle",
}


def _level_format(lvl: Any) -> str:
    """A list level's number format, a Word 2010 custom format (``w:numFmt w:val="custom" w:format="一, 二, …"``)
    mapped to the built-in format it spells out."""
    for choice in lvl.iter(f"{_MC}Choice"):
        for numfmt in choice.iter(f"{_W}numFmt"):
            custom = (numfmt.get(f"{_W}format") or "").strip()
            if custom[:1] in _CUSTOM_FORMATS:
                return _CUSTOM_FORMATS[custom[:1]]
    return _val(lvl, "numFmt") or "decimal"


@dataclass
class _Level:
    fmt: str = "decimal"
    text: str = "%1."
    start: int = 1
    suffix: str = "tab"
    legal: bool = False


@dataclass
class Numbering:
    """Word's list definitions (numbering.xml) and the running counters of one pass over the body."""

    levels: dict[str, dict[int, _Level]] = field(default_factory=dict)  # abstractNumId → ilvl → level
    abstract_of: dict[str, str] = field(default_factory=dict)  # numId → abstractNumId
    start_override: dict[tuple[str, int], int] = field(default_factory=dict)  # (numId, ilvl) → start
    counters: dict[str, list[int | None]] = field(default_factory=dict)  # abstractNumId → value per level
    started: set[str] = field(default_factory=set)  # numIds already used (their overrides applied)

    @classmethod
    def from_part(cls, numbering_element: Any) -> Numbering:
        numbering = cls()
        if numbering_element is None:
            return numbering
        for abstract in numbering_element.findall(f"{_W}abstractNum"):
            levels: dict[int, _Level] = {}
            for lvl in abstract.findall(f"{_W}lvl"):
                ilvl = int(lvl.get(f"{_W}ilvl", "0"))
                levels[ilvl] = _Level(
                    fmt=_level_format(lvl),
                    text=_val(lvl, "lvlText") if lvl.find(f"{_W}lvlText") is not None else "",
                    start=int(_val(lvl, "start") or 1),
                    suffix=_val(lvl, "suff") or "tab",
                    legal=lvl.find(f"{_W}isLgl") is not None,
                )
            numbering.levels[abstract.get(f"{_W}abstractNumId")] = levels
        for num in numbering_element.findall(f"{_W}num"):
            num_id = num.get(f"{_W}numId")
            numbering.abstract_of[num_id] = _val(num, "abstractNumId") or ""
            for override in num.findall(f"{_W}lvlOverride"):
                start = _val(override, "startOverride")
                if start is not None:
                    numbering.start_override[(num_id, int(override.get(f"{_W}ilvl", "0")))] = int(start)
        return numbering

    def label(self, num_id: str, ilvl: int) -> str:
        """Advance the list's counter at ``ilvl`` and return the label Word draws (``''`` for bullets and none)."""
        abstract = self.abstract_of.get(num_id)
        levels = self.levels.get(abstract or "")
        if not levels or ilvl not in levels:
            return ""
        counters = self.counters.setdefault(abstract, [None] * 9)
        if num_id not in self.started:
            self.started.add(num_id)
            for (override_num, override_level), start in self.start_override.items():
                if override_num == num_id:
                    counters[override_level] = start - 1
        level = levels[ilvl]
        current = counters[ilvl]
        counters[ilvl] = level.start if current is None else current + 1
        for deeper in range(ilvl + 1, 9):
            counters[deeper] = None
        if level.fmt == "bullet" or not level.text:
            return ""

        def render(match: re.Match[str]) -> str:
            k = int(match.group(1)) - 1
            if k not in levels:
                return ""
            value = counters[k] if counters[k] is not None else levels[k].start
            return format_number(value, "decimal" if level.legal else levels[k].fmt)

        label = re.sub(r"%([1-9])", render, level.text)
        return label + {"tab": " ", "space": " "}.get(level.suffix, "")


# ---------------------------------------------------------------------------------------------------------------
# The body


class _Body:
    """A pass over a document body that writes its lines."""

    def __init__(self, document: Any) -> None:
        from docx.enum.style import WD_STYLE_TYPE

        self.document = document
        part = document.part
        try:
            numbering_element = part.numbering_part.element
        except (KeyError, NotImplementedError):  # no numbering part
            numbering_element = None
        self.numbering = Numbering.from_part(numbering_element)
        self.styles = {s.style_id: s for s in document.styles if getattr(s, "style_id", None)}
        self.default_style = document.styles.default(WD_STYLE_TYPE.PARAGRAPH)
        self.lines: list[str] = []
        self.tables = 0

    # -- style lookups (a style inherits from its base style) --

    def _style_chain(self, style_id: str | None) -> Iterator[Any]:
        style = self.styles.get(style_id) if style_id else self.default_style
        seen = 0
        while style is not None and seen < 10:
            yield style
            style = style.base_style
            seen += 1

    def _heading_level(self, p: Any) -> int | None:
        """The Markdown level of a heading paragraph (Title 1, Heading N N+1), None for body text."""
        outline = _val(p.find(f"{_W}pPr"), "outlineLvl")
        style_id = _val(p.find(f"{_W}pPr"), "pStyle")
        for style in self._style_chain(style_id):
            name = (style.name or "").strip()
            if _TITLE_STYLE.match(name) or style.style_id == "Title":
                return 1
            heading = _HEADING_STYLE.match(name)
            if heading:
                return min(6, int(heading.group(1)) + 1)
            if outline is None:
                outline = _val(style.element.find(f"{_W}pPr"), "outlineLvl")
        if outline is not None and outline.isdigit() and int(outline) < 9:
            return min(6, int(outline) + 2)
        return None

    def _numbering(self, p: Any) -> tuple[str, int] | None:
        """(numId, ilvl) of an auto-numbered paragraph (own properties first, then its style's)."""
        ppr = p.find(f"{_W}pPr")
        candidates = [ppr] + [s.element.find(f"{_W}pPr") for s in self._style_chain(_val(ppr, "pStyle"))]
        num_id = ilvl = None
        for props in candidates:
            numpr = props.find(f"{_W}numPr") if props is not None else None
            if numpr is None:
                continue
            num_id = num_id or _val(numpr, "numId")
            ilvl = ilvl if ilvl is not None else _val(numpr, "ilvl")
            if num_id:
                break
        if not num_id or num_id == "0":
            return None
        return num_id, int(ilvl or 0)

    # -- text --

    def _text(self, element: Any) -> str:
        """The visible text of a paragraph (or run container): runs, hyperlinks, insertions, fields, controls."""
        out: list[str] = []

        def walk(node: Any) -> None:
            for child in node:
                tag = child.tag
                if not isinstance(tag, str) or tag in _SKIP:
                    continue
                if tag == f"{_W}t":
                    out.append(child.text or "")
                elif tag in (f"{_W}tab", f"{_W}ptab"):
                    out.append(" ")
                elif tag in (f"{_W}br", f"{_W}cr"):
                    if child.get(f"{_W}type") not in ("page", "column"):
                        out.append("\n")
                elif tag == f"{_W}noBreakHyphen":
                    out.append("-")
                elif tag in (f"{_W}p", f"{_W}tbl"):  # a nested block (e.g. inside a control): a line of its own
                    out.append("\n" + self._text(child) + "\n")
                else:
                    walk(child)

        walk(element)
        return "".join(out)

    def paragraph(self, p: Any) -> None:
        text = self._text(p)
        numbered = self._numbering(p)
        label = self.numbering.label(*numbered) if numbered else ""
        text = (label + text).strip()
        if not text:
            return
        level = self._heading_level(p)
        if level is not None:
            self.lines.append("#" * level + " " + re.sub(r"\s*\n\s*", " ", text))
        else:
            self.lines.extend(line.strip() for line in text.split("\n") if line.strip())

    def table(self, tbl: Any) -> None:
        self.tables += 1
        for tr in tbl.iter(f"{_W}tr"):
            if tr.getparent() is not tbl:
                continue  # a nested table's rows are read as text of the cell that holds it
            cells = []
            for tc in tr.findall(f"{_W}tc"):
                tc_pr = tc.find(f"{_W}tcPr")
                vmerge = tc_pr.find(f"{_W}vMerge") if tc_pr is not None else None
                if vmerge is not None and vmerge.get(f"{_W}val", "continue") == "continue":
                    continue  # the lower part of a vertically merged cell: its text is in the cell above
                paragraphs = [self._cell_paragraph(p) for p in tc.iter(f"{_W}p")]
                text = " ".join(t for t in paragraphs if t)
                if text:
                    cells.append(text)
            if cells:
                self.lines.append(" | ".join(cells))

    def _cell_paragraph(self, p: Any) -> str:
        numbered = self._numbering(p)
        label = self.numbering.label(*numbered) if numbered else ""
        return re.sub(r"\s+", " ", label + self._text(p)).strip()

    def block(self, element: Any) -> None:
        tag = element.tag
        if tag == f"{_W}p":
            self.paragraph(element)
        elif tag == f"{_W}tbl":
            self.table(element)
        elif tag == f"{_W}sdt":
            gallery = element.find(f"{_W}sdtPr/{_W}docPartObj/{_W}docPartGallery")
            if gallery is not None and "Table of Contents" in (gallery.get(f"{_W}val") or ""):
                return  # a table of contents repeats the headings
            content = element.find(f"{_W}sdtContent")
            for child in content if content is not None else ():
                self.block(child)
        elif tag in (f"{_W}customXml", f"{_W}ins", f"{_W}smartTag"):
            for child in element:
                self.block(child)


def _refuse_ole(path: Path) -> None:
    """A .docx that is an OLE container: password-protected (an encrypted package inside) or a legacy .doc."""
    data = path.read_bytes()
    if _ENCRYPTED_STREAM in data:
        raise LoadError(
            SkipReason.encrypted,
            "password-protected DOCX; save an unprotected copy (Word: File → Info → Protect Document, clear the "
            "password)",
        )
    raise LoadError(
        SkipReason.misnamed,
        f'misnamed: this .docx is a legacy Word .doc; convert it: soffice --headless --convert-to docx "{path.name}"',
    )


def load_docx(path: Path) -> RawDocument:
    """Read a .docx with python-docx into one-paragraph-a-line text (see the module docstring for what is kept).

    Raises:
        LoadError: the file is password-protected, a legacy .doc, not a Word document, damaged, or has no text.
    """
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(_OLE_MAGIC):
        _refuse_ole(path)
    if not head.startswith(b"PK"):
        raise LoadError(SkipReason.corrupt, "corrupt DOCX: not a ZIP package; re-save it from Word or WPS")
    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError) as exc:
        detail = first_line(exc)
        raise LoadError(
            SkipReason.corrupt, f"corrupt DOCX ({detail}); re-save it from Word or WPS, or re-download it"
        ) from None
    except ValueError as exc:  # python-docx: a package whose main part is not a Word document (an .xlsx renamed)
        raise LoadError(SkipReason.misnamed, f"misnamed: not a Word document ({exc})") from None
    except Exception as exc:  # damaged XML inside the package, and whatever else a broken file raises
        detail = first_line(exc)
        raise LoadError(SkipReason.corrupt, f"corrupt DOCX ({detail}); re-save it from Word or WPS") from None

    body = _Body(document)
    for element in document.element.body:
        body.block(element)
    if not any(line.lstrip("# ").strip() for line in body.lines):
        raise LoadError(SkipReason.no_text, "DOCX without text (only images or empty)")
    return RawDocument(path, "docx", ["\n".join(body.lines)], paged=False, markup=True, one_per_line=True)
