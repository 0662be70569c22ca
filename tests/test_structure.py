"""Unit-aware chunking: statutes, Markdown and numbered headings are split at their units, small neighbours merged,
never over the size, with the heading path in each chunk's metadata."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from offline_embft.core.config import IngestConfig
from offline_embft.core.io import read_jsonl
from offline_embft.ingest import run as ingest
from offline_embft.ingest.clean import clean_pages
from offline_embft.ingest.loaders import markdown_to_text
from offline_embft.ingest.structure import UnitSplitter, find_outline, heading_level, is_article

ARTICLE_START = re.compile(r"^第[一二三四五六七八九十百千零]+条")


def _statute_text(laws_dir: Path, name: str = "company_law", chapters: int = 3) -> str:
    """A statute as ingest's cleaner writes it: the law's name, then chapter/section headings and articles."""
    rows = [json.loads(line) for line in (laws_dir / "articles" / f"{name}.jsonl").read_text("utf-8").splitlines()]
    rows.sort(key=lambda r: r["n"])
    lines, chapter, section, seen = [rows[0]["law"]], None, None, 0
    for row in rows:
        if row["chapter"] != chapter:
            seen += 1
            if seen > chapters:
                break
            chapter = row["chapter"]
            lines.append(chapter)
        if row["section"] and row["section"] != section:
            section = row["section"]
            lines.append(section)
        paragraphs = row["text"].split("\n")
        lines.append(f"{row['article_no']} {paragraphs[0]}")
        lines.extend(paragraphs[1:])
    return "\n".join(lines)


def _chars(size: int) -> UnitSplitter:
    """A splitter sized by characters whose fallback cuts a long unit at sentence ends (。；), hard cuts if need be."""

    def split_long(text: str) -> list[str]:
        parts, current = [], ""
        sentences = [s[i : i + size] for s in re.findall(r"[^。；]+[。；]?", text) for i in range(0, len(s), size)]
        for sentence in sentences:
            if current and len(current) + len(sentence) > size:
                parts.append(current.strip())
                current = ""
            current += sentence
        return [p for p in [*parts, current.strip()] if p]

    return UnitSplitter(size, len, split_long)


def test_heading_and_article_patterns():
    assert heading_level("第三章 有限责任公司的股权转让") == 3.0
    assert heading_level("第二节 组织机构") == 4.0
    assert heading_level("第一编 总则") == 2.0
    assert heading_level("一、总体要求") == 5.0
    assert heading_level("（二）适用范围") == 6.0
    assert heading_level("4.1.2 密码管理") == 9.0 and heading_level("4.1. 要求") == 8.0
    assert heading_level("1 范围") == 7.0
    # Body text is not a heading: sentence punctuation, a long line, an amount, a list item ending in ；.
    body = ["第三章规定的情形除外，依照本法处理。", "（一）股东会；", "2 000 元", "一、" + "很长的标题" * 20]
    for line in [*body, "1. 提交申请书"]:
        assert heading_level(line) is None, line
    assert is_article("第十条 公司应当…") and is_article("第十条之一 …") and not is_article("第十条规定的")


def test_statute_is_split_at_articles_with_chapter_paths(laws_dir):
    text = _statute_text(laws_dir, chapters=3)
    outline = find_outline(text)
    pieces = _chars(200).split(text, outline)
    law = "中华人民共和国公司法"
    assert outline.headings[0].title == law and outline.headings[0].level == 0.0
    articles = sum(1 for line in text.split("\n") if is_article(line))
    assert len(pieces) < articles, "small articles are merged with their neighbours"
    assert all(len(p.text) <= 200 for p in pieces), "never over the size"
    # Every piece is where it says it is, and the pieces cover the text in order with nothing left out or repeated.
    assert all(text[p.start : p.end] == p.text for p in pieces)
    assert "".join(p.text for p in pieces).replace("\n", "") == text.replace("\n", "")
    starts = outline.unit_starts
    for piece in pieces:
        # A piece starts at a unit (a heading, an article) unless it continues a unit too long for one chunk.
        if piece.start not in starts:
            unit_start = max(s for s in starts if s < piece.start)
            unit_end = min([s for s in starts if s > piece.start] + [len(text)])
            assert len(text[unit_start:unit_end].strip()) > 200, piece.text
        assert piece.headings[0] == law
    by_article = {m: p for p in pieces for m in re.findall(r"^第[一二三四五六七八九十百千零]+条", p.text, re.M)}
    assert by_article["第一条"].headings == [law, "第一章 总则"]
    chapter_two = next(line for line in text.split("\n") if line.startswith("第二章"))
    second_chapter_articles = [p for p in pieces if p.headings[:2] == [law, chapter_two]]
    assert second_chapter_articles, "chapter two's articles carry its heading"
    # The title and the first chapter's heading open the first chunk, whose path is its content's.
    assert pieces[0].text.startswith(f"{law}\n第一章 总则\n第一条")
    assert pieces[0].headings == [law, "第一章 总则"]
    assert not any(heading_level(p.text) is not None for p in pieces), "no chunk is a lone heading"


def test_sections_nest_under_chapters(laws_dir):
    text = _statute_text(laws_dir, "company_law", chapters=5)
    outline = find_outline(text)
    sections = [h for h in outline.headings if h.level == 4.0]
    assert sections, "the company law's chapters have sections"
    first = sections[0]
    path = outline.path_at(first.end + 1)
    assert path[-1] == first.title and heading_level(path[-2]) == 3.0 and len(path) == 3
    # The next chapter closes the section.
    next_chapter = next(h for h in outline.headings if h.level == 3.0 and h.start > first.start)
    assert outline.path_at(next_chapter.start) == [path[0], next_chapter.title]


def test_each_unit_gives_every_article_its_own_chunk(laws_dir):
    """chunking=each-unit: one article per chunk (the passages a statute's questions are about); a heading goes with
    the article it introduces; only a fragment under merge_below takes in its neighbour."""
    text = _statute_text(laws_dir, chapters=3)
    outline = find_outline(text)
    packed = _chars(300).split(text, outline)
    splitter = _chars(300)
    splitter.pack = False
    pieces = splitter.split(text, outline)
    articles = [line for line in text.split("\n") if is_article(line)]
    assert len(packed) < 0.6 * len(articles), "packed: several articles share a chunk"
    per_piece = [len(re.findall(ARTICLE_START.pattern, p.text, re.M)) for p in pieces]
    assert all(len(p.text) <= 300 for p in pieces) and sum(per_piece) == len(articles)
    shared = [p.text for p, n in zip(pieces, per_piece, strict=True) if n > 1]
    assert len(shared) <= 0.1 * len(pieces), shared
    for text_ in shared:  # only a fragment (under 300/8 characters) took in the next article
        second = [m.start() for m in re.finditer(ARTICLE_START.pattern, text_, re.M)][1]
        assert len(text_[:second].strip()) < 300 / 8, text_
    headings = {text[h.start : h.end] for h in outline.headings}
    for piece in pieces:  # each opens with its article, or with the headings that introduce it
        body = [line for line in piece.text.split("\n") if line not in headings]
        assert ARTICLE_START.match(body[0]) or piece.start not in outline.unit_starts, piece.text
    assert "".join(p.text for p in pieces).replace("\n", "") == text.replace("\n", "")
    assert pieces[0].text.startswith("中华人民共和国公司法\n第一章 总则\n第一条")
    assert per_piece[0] == 1


def test_long_article_is_split_by_sentences_with_its_heading(laws_dir):
    long_article = "第五条 " + "公司应当依法履行各项义务并接受监督。" * 20
    text = "\n".join(["某某管理办法", "第一章 总则", "第一条 为了规范管理，制定本办法。", "第二章 义务", long_article])
    pieces = _chars(120).split(text, find_outline(text))
    assert all(len(p.text) <= 120 for p in pieces)
    assert pieces[0].text == "某某管理办法\n第一章 总则\n第一条 为了规范管理，制定本办法。"
    assert pieces[1].text.startswith("第二章 义务\n第五条 公司应当"), "a heading is never a chunk of its own"
    assert len(pieces) >= 4 and all(p.headings == ["某某管理办法", "第二章 义务"] for p in pieces[1:])


def test_a_short_tail_of_a_long_article_joins_the_next_article():
    sentence = "公司应当依法履行信息披露义务并接受监督。"  # 20 characters
    tail = "（十一）其他损害交易者的情形。"
    text = "\n".join(["第一条 " + sentence * 4, tail, "第二条 短条文。", "第三条 " + sentence * 2])
    pieces = _chars(50).split(text, find_outline(text))
    assert all(len(p.text) <= 50 for p in pieces)
    assert any(p.text == f"{tail}\n第二条 短条文。" for p in pieces), [p.text for p in pieces]
    assert "".join(p.text for p in pieces).replace("\n", "") == text.replace("\n", "")


def test_single_file_holdout_is_cut_at_an_article(laws_dir, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "公司法.txt").write_text(_statute_text(laws_dir, chapters=5), encoding="utf-8")
    out = ingest.run(IngestConfig(input_dir=str(docs), out_dir=str(tmp_path / "out"), tokenizer="", seed=3))
    val = read_jsonl(out / "val.jsonl")
    first = val[0]["text"].split("\n")[0]
    assert is_article(first) or heading_level(first) is not None, "no article is split between train and val"


def test_markdown_headings_give_the_path(tmp_path):
    markdown = (
        "# 信息安全管理制度\n\n总则部分说明本制度的目的。\n\n## 第一部分 账号管理\n\n### 1.1 密码\n\n"
        "密码长度不少于十二位，每九十天更换一次。\n\n### 1.2 权限\n\n权限按最小授权原则分配。\n\n"
        "## 第二部分 设备管理\n\n设备须登记，离职时收回。\n"
    )
    cleaned = clean_pages([markdown_to_text(markdown)], markup=True)
    assert "#" not in cleaned.text
    assert [cleaned.text[a:b] for a, b, _ in cleaned.headings] == [
        "信息安全管理制度",
        "第一部分 账号管理",
        "1.1 密码",
        "1.2 权限",
        "第二部分 设备管理",
    ]
    outline = find_outline(cleaned.text, cleaned.headings)
    # Chunks small enough that each section stays on its own.
    pieces = UnitSplitter(30, len, lambda t: [t], merge_below=0).split(cleaned.text, outline)
    paths = {p.text.split("\n")[-1]: p.headings for p in pieces}
    assert paths["密码长度不少于十二位，每九十天更换一次。"] == ["信息安全管理制度", "第一部分 账号管理", "1.1 密码"]
    assert paths["权限按最小授权原则分配。"] == ["信息安全管理制度", "第一部分 账号管理", "1.2 权限"]
    assert paths["设备须登记，离职时收回。"] == ["信息安全管理制度", "第二部分 设备管理"]
    # Sections below a third of the size (merge_below) merge across their headings; the path is what they share.
    merged = UnitSplitter(200, len, lambda t: [t], merge_below=1 / 3).split(cleaned.text, outline)
    assert len(merged) < len(pieces)
    assert any("1.1 密码" in p.text and "1.2 权限" in p.text for p in merged)


def test_numbered_headings_in_plain_text():
    text = "\n".join(
        [
            "1 范围",
            "本标准规定了数据备份的要求。",
            "2 规范性引用文件",
            "下列文件对于本文件的应用是必不可少的。",
            "4 技术要求",
            "4.1 备份频率",
            "核心系统每日全量备份一次。",
            "4.1.1 增量备份",
            "增量备份每小时一次，保留七天。",
            "4.2 备份介质",
            "备份介质应异地存放。",
        ]
    )
    outline = find_outline(text)
    assert [h.title for h in outline.headings] == [
        "1 范围",
        "2 规范性引用文件",
        "4 技术要求",
        "4.1 备份频率",
        "4.1.1 增量备份",
        "4.2 备份介质",
    ]
    pieces = UnitSplitter(25, len, lambda t: [t], merge_below=0).split(text, outline)
    by_last = {p.text.split("\n")[-1]: p.headings for p in pieces}
    assert by_last["增量备份每小时一次，保留七天。"] == ["4 技术要求", "4.1 备份频率", "4.1.1 增量备份"]
    assert by_last["备份介质应异地存放。"] == ["4 技术要求", "4.2 备份介质"]


@pytest.mark.parametrize("chunking", ["units", "each-unit", "sentences"])
def test_ingest_writes_heading_paths_and_never_exceeds_the_token_size(chunking, laws_dir, minilm_path, tmp_path):
    from offline_embft.core.tokenizer_check import load_tokenizer

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "公司法.txt").write_text(_statute_text(laws_dir, chapters=4), encoding="utf-8")
    cfg = IngestConfig(input_dir=str(docs), out_dir=str(tmp_path / "out"), tokenizer=str(minilm_path))
    cfg.val_ratio, cfg.chunking = 0.0, chunking
    cfg.chunk_size, cfg.chunk_overlap, cfg.max_seq_length = 256, 16, 256
    out = ingest.run(cfg)
    chunks = read_jsonl(out / "train.jsonl")
    tokenizer = load_tokenizer(minilm_path)
    assert max(len(tokenizer(c["text"])["input_ids"]) for c in chunks) <= 256
    assert all(c["headings"][0] == "中华人民共和国公司法" for c in chunks)
    first_article = next(c for c in chunks if "第一条" in c["text"])
    assert first_article["headings"] == ["中华人民共和国公司法", "第一章 总则"]
    if chunking != "sentences":
        starts = [c["text"].split("\n")[0] for c in chunks]
        at_units = sum(1 for s in starts if ARTICLE_START.match(s) or heading_level(s) is not None)
        assert at_units / len(chunks) > 0.8, "chunks start at articles and headings"


def test_cli_chunking_flag(laws_dir, tmp_path):
    from typer.testing import CliRunner

    from offline_embft.cli import app

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "公司法.txt").write_text(_statute_text(laws_dir, chapters=2), encoding="utf-8")
    runner = CliRunner()
    args = ["ingest", str(docs), "--out", str(tmp_path / "out"), "--tokenizer", "", "--val-ratio", "0"]
    result = runner.invoke(app, [*args, "--chunking", "units"])
    assert result.exit_code == 0, result.output
    config = (tmp_path / "out" / ingest.CONFIG_FILE).read_text(encoding="utf-8")
    assert "chunking: units" in config
    chunks = read_jsonl(tmp_path / "out" / "train.jsonl")
    starts = [c["text"].split("\n")[0] for c in chunks]
    assert sum(1 for s in starts if is_article(s) or heading_level(s) is not None) / len(chunks) > 0.8
    bad = runner.invoke(app, [*args, "--chunking", "pages"])
    assert bad.exit_code == 2 and "pages" in bad.output


def test_a_text_without_units_is_chunked_as_by_sentences(tmp_path):
    """each-unit (the default) on plain text, without headings or articles: exactly the sentence splitter's chunks."""
    docs = tmp_path / "docs"
    docs.mkdir()
    text = "".join(f"这是第{i}句话，讲述一个没有标题的普通段落。" + ("\n" if i % 5 == 4 else "") for i in range(300))
    (docs / "plain.txt").write_text(text, encoding="utf-8")
    chunks = {}
    for chunking in ("sentences", "each-unit"):
        cfg = IngestConfig(input_dir=str(docs), out_dir=str(tmp_path / chunking), tokenizer="")
        cfg.val_ratio, cfg.chunking = 0.0, chunking
        chunks[chunking] = [c["text"] for c in read_jsonl(ingest.run(cfg) / "train.jsonl")]
    assert len(chunks["sentences"]) > 10 and chunks["each-unit"] == chunks["sentences"]
