"""A document's own units — chapters, sections, articles, numbered and Markdown headings — and chunks that follow them.

Statutes, standards, policies and manuals are numbered: ``第三章 …`` / ``第二节 …`` / ``第十条 …``, ``4.1.2 …``,
``一、…``, or headings marked up by the loader (Markdown ``#`` lines from Markdown, DOCX heading styles and HTML
``<h1>``–``<h6>``; the cleaner strips the ``#`` and hands their positions over). :func:`find_outline` finds them in a
cleaned text; :class:`UnitSplitter` cuts the text at those boundaries first, then makes each unit a chunk
(``chunking: each-unit``, the default: a question is about one article) or packs whole units into chunks of at most
``chunk_size`` tokens (``units``), a fragment merged with its neighbour either way, and only a unit that is too long
on its own is cut further, by sentences, with the ordinary splitter. Each chunk carries its heading path, e.g.
``["中华人民共和国公司法", "第三章 有限责任公司的股权转让"]``.

Heading levels: marked-up headings keep their Markdown level (1–6). Detected headings get fixed levels that sort
below a document title (0) and nest the usual way: 编/部分 2, 分编 2.5, 章 3, 节 4, ``一、`` 5, ``（一）`` 6, and a
numbered title ``4.1.2`` 6 + its depth. Articles (第X条) start units but are not headings: they are the chunk text.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from offline_embft.core.han import HAN_IDEOGRAPHS

_NUM = "一二三四五六七八九十百千零〇两0-9"
# A title is short and has no sentence or clause punctuation (a line that has some is body text, e.g. a list item).
_TITLE = r"[^。；，,;！？!?：:]{0,40}"
_CHINESE_HEADINGS: tuple[tuple[re.Pattern[str], float], ...] = (
    (re.compile(rf"^第[{_NUM}]+分编(?:[ \t]*{_TITLE})?$"), 2.5),
    (re.compile(rf"^第[{_NUM}]+(?:编|部分)(?:[ \t]*{_TITLE})?$"), 2.0),
    (re.compile(rf"^第[{_NUM}]+章(?:[ \t]*{_TITLE})?$"), 3.0),
    (re.compile(rf"^第[{_NUM}]+节(?:[ \t]*{_TITLE})?$"), 4.0),
    (re.compile(rf"^[一二三四五六七八九十]{{1,3}}、[ \t]*\S{_TITLE}$"), 5.0),
    (re.compile(rf"^[（(][一二三四五六七八九十]{{1,3}}[）)][ \t]*\S{_TITLE}$"), 6.0),
)
# 4 / 4.1 / 4.1.2 then a space and a short title with at least one letter or ideograph (not "2 000 元"). "1. …"
# (one number and a dot) is how list items are numbered, in Word's lists and in text: not a heading.
_NUMBERED = re.compile(rf"^(\d{{1,2}}(?:\.\d{{1,2}}){{1,4}}\.?|\d{{1,2}})[ \t]+(?=\D)({_TITLE})$")
_LETTER = re.compile(f"[A-Za-z{HAN_IDEOGRAPHS}]")
# An article number opening a paragraph: then a space, a colon or the text itself, but not a reference that happens
# to open one ("第十条规定的…", "第十条至第十二条…").
ARTICLE_RE = re.compile(rf"^第[{_NUM}]+条(?:之[{_NUM}]+)?(?:[ \t：:]|$|(?![规的至和、或及所中第]))")
_SENTENCE_MARK = re.compile(r"[。；！？!?;]")
TITLE_MAX_CHARS = 60


@dataclass(frozen=True)
class Heading:
    """A heading line ``text[start:end]`` of a cleaned text and its nesting level (smaller is higher)."""

    start: int
    end: int
    level: float
    title: str


def heading_level(line: str) -> float | None:
    """The level of a line that is a numbered or Chinese title (第三章 …, 第二节 …, 一、…, 4.1.2 …), else None."""
    line = line.strip()
    if not line or len(line) > TITLE_MAX_CHARS:
        return None
    for pattern, level in _CHINESE_HEADINGS:
        if pattern.match(line):
            return level
    numbered = _NUMBERED.match(line)
    if numbered and _LETTER.search(numbered.group(2)):
        return 6.0 + numbered.group(1).rstrip(".").count(".") + 1
    return None


def is_article(line: str) -> bool:
    """Whether a paragraph starts an article (``第十条 …``, ``第十条之一 …``)."""
    return bool(ARTICLE_RE.match(line))


@dataclass
class Outline:
    """A text's headings (in order) and unit starts, and the heading path at any position."""

    headings: list[Heading]
    unit_starts: list[int]  # offsets where a unit (heading line or article) begins, sorted

    def __post_init__(self) -> None:
        self._starts = [h.start for h in self.headings]
        self._paths: list[tuple[str, ...]] = []
        stack: list[Heading] = []
        for heading in self.headings:
            while stack and stack[-1].level >= heading.level:
                stack.pop()
            stack.append(heading)
            self._paths.append(tuple(h.title for h in stack))

    def path_at(self, offset: int) -> list[str]:
        """The heading path in force at ``offset`` (a heading line belongs to its own section)."""
        i = bisect_right(self._starts, offset) - 1
        return list(self._paths[i]) if i >= 0 else []

    def path_of(self, start: int, end: int) -> list[str]:
        """The heading path of the stretch ``[start, end)``: that of its content, past the heading lines opening it
        (a chunk that starts with ``第一章 总则`` belongs to that chapter, not to the one before)."""
        ends = {h.start: h.end for h in self.headings}
        position = start
        while position in ends and ends[position] + 1 < end:
            position = ends[position] + 1
        return self.path_at(position)


def _lines(text: str) -> list[tuple[int, int]]:
    """(start, end) of every line (paragraph) of a cleaned text."""
    spans, start = [], 0
    for line in text.split("\n"):
        spans.append((start, start + len(line)))
        start += len(line) + 1
    return spans


def find_outline(text: str, marked: Sequence[tuple[int, int, int]] = ()) -> Outline:
    """Find the headings and unit starts of a cleaned text (one paragraph a line).

    Args:
        text: The cleaned text.
        marked: ``(start, end, level)`` of headings the document marked up itself (Markdown ``#`` lines, DOCX heading
            styles, HTML ``<hN>``): they are headings whatever their wording.

    The document's first paragraph is its title (level 0, above everything) when it is short, has no sentence
    punctuation and a heading or an article comes right after it: a statute's name above 第一章, a Word title typed
    in a plain paragraph, an HTML page's name above its first ``<h1>``.
    """
    by_start = {start: (end, level) for start, end, level in marked}
    headings: list[Heading] = []
    unit_starts: list[int] = []
    first: tuple[int, int] | None = None  # the first paragraph, when it is not a unit itself
    title_candidate = True
    for start, end in _lines(text):
        line = text[start:end].strip()
        if not line:
            continue
        if start in by_start:
            end_, level = by_start[start]
            headings.append(Heading(start, end_, float(level), text[start:end_].strip()))
            unit_starts.append(start)
        elif (level := heading_level(line)) is not None:
            headings.append(Heading(start, end, level, line))
            unit_starts.append(start)
        elif is_article(line):
            unit_starts.append(start)
        elif first is None and title_candidate:
            first = (start, end)
            continue
        else:
            title_candidate = False
            continue
        if first is not None and title_candidate:
            a, b = first
            title = text[a:b].strip()
            if len(title) <= TITLE_MAX_CHARS and not _SENTENCE_MARK.search(title):
                headings.insert(0, Heading(a, b, 0.0, title))
                unit_starts.insert(0, a)
        title_candidate = False
    return Outline(headings, unit_starts)


# ---------------------------------------------------------------------------------------------------------------
# Splitting at units


@dataclass
class Piece:
    """A chunk: its text, where it is (``text[start:end]``; -1 when it could not be located) and its heading path."""

    start: int
    end: int
    headings: list[str]
    text: str


@dataclass
class _Unit:
    start: int
    end: int
    path: tuple[str, ...]
    heading_only: bool  # the unit is only a heading line (its section's body follows as the next unit)


def _common_prefix(paths: Sequence[Sequence[str]]) -> list[str]:
    prefix: list[str] = list(paths[0]) if paths else []
    for path in paths[1:]:
        n = 0
        while n < min(len(prefix), len(path)) and prefix[n] == path[n]:
            n += 1
        prefix = prefix[:n]
    return prefix


class UnitSplitter:
    """Cuts text at its units, packs whole units into chunks that fit, and splits only units that are too long.

    Args:
        chunk_size: The most a chunk may count (in ``count``'s unit).
        count: A text's length in tokens (or characters).
        split_long: Splits a text that is longer than ``chunk_size`` (the sentence splitter, with its overlap).
        merge_below: A chunk smaller than this share of ``chunk_size`` takes in the next unit even across a heading
            boundary (a short section is not left as a fragment); its heading path is then what both share.
        pack: Fill each chunk with as many units of the same heading path as fit (False: one unit per chunk, only
            fragments under ``merge_below`` take in the next one).
    """

    def __init__(
        self,
        chunk_size: int,
        count: Callable[[str], int],
        split_long: Callable[[str], list[str]],
        merge_below: float = 1 / 8,
        pack: bool = True,
    ) -> None:
        self.chunk_size = chunk_size
        self.count = count
        self.split_long = split_long
        self.merge_below = merge_below
        self.pack = pack

    def _units(self, text: str, outline: Outline, start: int, end: int) -> list[_Unit]:
        heading_starts = {h.start for h in outline.headings}
        cuts = [start, *(s for s in outline.unit_starts if start < s < end), end]
        units = []
        for a, b in pairwise(cuts):
            body = text[a:b].strip()
            if not body:
                continue
            heading_only = a in heading_starts and "\n" not in body
            units.append(_Unit(a, b, tuple(outline.path_at(a)), heading_only))
        return units

    def split(self, text: str, outline: Outline, start: int = 0, end: int | None = None) -> list[Piece]:
        """Chunks of ``text[start:end]``, in order, each at most ``chunk_size`` by ``count``."""
        end = len(text) if end is None else end
        pieces: list[Piece] = []
        group: list[_Unit] = []  # the units of the chunk being built

        for unit in self._units(text, outline, start, end):
            if group and self._joins(text, group, unit):
                group.append(unit)
                continue
            # Heading lines at the end of the chunk being built introduce this unit: they go with it.
            body = list(group)
            while body and body[-1].heading_only:
                body.pop()
            trail = group[len(body) :]
            pieces.extend(self._pack(text, body))
            head = trail[0].start if trail else unit.start
            if self.count(text[head : unit.end].strip()) > self.chunk_size:
                # Too long for one chunk: cut by sentences (the splitter's own sizing and overlap). The last part
                # (often short: an article's last list item) goes on like a unit: the next units may join it.
                parts = self._split_long(text, head, unit.end, list(unit.path))
                tail = parts[-1] if len(parts) > 1 and parts[-1].start >= 0 else None
                group = [_Unit(parts.pop().start, unit.end, unit.path, heading_only=False)] if tail else []
                pieces.extend(parts)
            else:
                group = [*trail, unit]
        pieces.extend(self._pack(text, group))
        return pieces

    @staticmethod
    def _pack(text: str, group: list[_Unit]) -> list[Piece]:
        """The chunk made of ``group``'s units (none for an empty group), blank edges trimmed."""
        if not group:
            return []
        body = text[group[0].start : group[-1].end]
        start = group[0].start + len(body) - len(body.lstrip())
        # Heading lines that open the chunk introduce what follows: the chunk's path is that of its content.
        lead = 0
        while lead < len(group) - 1 and group[lead].heading_only:
            lead += 1
        path = _common_prefix([u.path for u in group[lead:]])
        return [Piece(start, start + len(body.strip()), path, body.strip())]

    def _joins(self, text: str, group: list[_Unit], unit: _Unit) -> bool:
        """Whether ``unit`` goes into the chunk being built."""
        if self.count(text[group[0].start : unit.end].strip()) > self.chunk_size:
            return False
        if all(u.heading_only for u in group) or (self.pack and unit.path == group[0].path):
            return True
        # A heading boundary (or any unit, unpacked): cross it only to rescue a fragment.
        return self.count(text[group[0].start : group[-1].end].strip()) < self.merge_below * self.chunk_size

    def _split_long(self, text: str, start: int, end: int, path: list[str]) -> list[Piece]:
        span = text[start:end]
        start += len(span) - len(span.lstrip())
        span = span.strip()
        pieces, cursor = [], 0
        parts = self.split_long(span)
        for index, part in enumerate(parts):
            # The last part ends the span (the first search could find a repeated sentence earlier on).
            last = index == len(parts) - 1 and span.endswith(part)
            found = len(span) - len(part) if last else span.find(part, cursor)
            if found < 0:  # not expected (the splitter returns stretches of its input): keep it, unlocated
                pieces.append(Piece(-1, -1, path, part))
                continue
            cursor = found + 1
            pieces.append(Piece(start + found, start + found + len(part), path, part))
        return pieces
