"""Word (DOCX), HTML and office-exported PDFs: what is kept (headings, numbered titles, tables, lists), what is
dropped (running headers/footers, page numbers, comments, text boxes, navigation), encodings, and the files that
are skipped with a reason (password-protected, corrupt, legacy .doc/.wps/.xlsx)."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from offline_embft.core.config import IngestConfig
from offline_embft.core.io import read_jsonl
from offline_embft.ingest import run as ingest
from offline_embft.ingest.loaders import LoadError, SkipReason, load

OFFICE = Path(__file__).resolve().parents[1] / "data" / "office"
HAN = re.compile(r"[\u3400-\u9fff]")


def _truth(name: str) -> dict:
    return json.loads((OFFICE / f"{name}.truth.json").read_text(encoding="utf-8"))


def _han(text: str) -> str:
    return "".join(HAN.findall(text))


def _run(docs: Path, out: Path, **kwargs) -> tuple[list[dict], dict]:
    cfg = IngestConfig(input_dir=str(docs), out_dir=str(out), val_ratio=0.0, **kwargs)
    ingest.run(cfg)
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    return read_jsonl(out / "train.jsonl"), stats


# ---------------------------------------------------------------------------------------------------------------
# DOCX


@pytest.mark.parametrize("name", ["company_law_typed", "insurance_law_autonum"])
def test_docx_body_in_reading_order_without_running_lines_comments_or_text_boxes(name):
    truth = _truth(name)
    raw = load(OFFICE / f"{name}.docx")
    assert raw.kind == "docx" and raw.markup and raw.one_per_line
    lines = raw.pages[0].split("\n")
    # Headings are Markdown heading lines: the Title style one level above the chapters' Heading 1.
    assert lines[0] == f"# {truth['title']}"
    chapters = [line for line in lines if line.startswith("## ")]
    assert [c[3:] for c in chapters] == [line for line in truth["lines"] if re.match(r"^第.+章 ", line)]
    # Every body line, in order, numbers drawn by Word's auto-numbering included (第一条 …, 1. …).
    body = [re.sub(r"^#+ ", "", line).replace("\u3000", " ") for line in lines]
    assert body == truth["lines"]
    text = raw.pages[0]
    assert "内部资料" not in text and "注意保密" not in text, "running header dropped"
    assert not re.search(r"第\s*\d+\s*页", text), "page-number footer dropped"
    assert "法务复核" not in text, "comment not mixed in"
    assert "图示说明文字" not in text, "text box not mixed in"


def test_docx_table_cells_come_out_once_in_row_order():
    truth = _truth("company_law_typed")
    lines = load(OFFICE / "company_law_typed.docx").pages[0].split("\n")
    start = lines.index("事项 | 责任部门 | 办理时限 | 备注")
    rows = [line.split(" | ") for line in lines[start : start + len(truth["cells"])]]
    assert rows == truth["cells"]
    # The cell merged down two rows is read once (in its first row); the one merged across once.
    assert sum(line.count("登记机关") for line in lines[start : start + 5]) == 1
    assert sum(line.count("注销登记须先清算") for line in lines) == 1


def test_docx_headings_and_numbered_titles_become_chunk_metadata(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("company_law_typed", "insurance_law_autonum"):
        shutil.copy(OFFICE / f"{name}.docx", docs)
    chunks, stats = _run(docs, tmp_path / "out", chunking="units", chunk_size=200, tokenizer="")
    assert {r["type"] for r in stats["read"]} == {"docx"}
    # The title, 3 chapters; 19 units: those and 15 articles.
    assert all(r["headings"] == 4 and r["units"] == 19 for r in stats["read"]), stats["read"]
    checked = 0
    for name in ("company_law_typed", "insurance_law_autonum"):
        truth = _truth(name)
        for chunk in (c for c in chunks if c["source"] == f"{name}.docx"):
            assert chunk["headings"][0] == truth["title"]
            label = re.match(r"^(第[一二三四五六七八九十百]+条) ", chunk["text"])
            if label:
                assert chunk["headings"] == truth["paths"][label.group(1)], chunk["text"][:30]
                checked += 1
    assert checked >= 10


def test_numbering_renders_chinese_counting():
    from offline_embft.ingest.loaders.docx import chinese_number, format_number

    assert [chinese_number(n) for n in (1, 10, 11, 20, 21, 100, 105, 110, 2024)] == [
        "一",
        "十",
        "十一",
        "二十",
        "二十一",
        "一百",
        "一百零五",
        "一百一十",
        "二千零二十四",
    ]
    assert format_number(12, "taiwaneseCountingThousand") == "十二", "LibreOffice's name for 一、二、三"
    assert (
        format_number(12, "chineseLegalSimplified") == "拾贰" and format_number(2024, "ideographDigital") == "二〇二四"
    )
    assert format_number(3, "upperRoman") == "III" and format_number(28, "lowerLetter") == "bb"
    assert format_number(2, "decimalEnclosedCircle") == "②" and format_number(3, "ideographTraditional") == "丙"
    # Word 2010+ writes 一、二、三 as a custom format with a decimal fallback for older readers.
    from docx.oxml import parse_xml

    from offline_embft.ingest.loaders.docx import _level_format

    lvl = parse_xml(
        '<w:lvl xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main" '
        'xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006" '
        'xmlns:w14="http://schemas.microsoft.com/office/word/2010/wordml" w:ilvl="0">'
        '<mc:AlternateContent><mc:Choice Requires="w14"><w:numFmt w:val="custom" w:format="一, 二, 三, ..."/>'
        '</mc:Choice><mc:Fallback><w:numFmt w:val="decimal"/></mc:Fallback></mc:AlternateContent></w:lvl>'
    )
    assert _level_format(lvl) == "chineseCounting"


def _encrypted_docx(path: Path) -> None:
    from msoffcrypto.format.ooxml import OOXMLFile

    with open(OFFICE / "company_law_typed.docx", "rb") as handle:
        out = io.BytesIO()
        OOXMLFile(handle).encrypt("secret", out)
    path.write_bytes(out.getvalue())


def test_bad_docx_and_legacy_office_files_are_skipped_with_reasons(tmp_path, caplog):
    pytest.importorskip("msoffcrypto")
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(OFFICE / "company_law_typed.docx", docs / "good.docx")
    _encrypted_docx(docs / "locked.docx")
    data = (OFFICE / "company_law_typed.docx").read_bytes()
    (docs / "truncated.docx").write_bytes(data[: len(data) // 2])
    (docs / "zeros.docx").write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    (docs / "old.docx").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600)
    for name in ("制度.doc", "通知.wps", "台账.xlsx", "汇报.pptx"):
        (docs / name).write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100)
    with caplog.at_level(logging.WARNING):
        chunks, stats = _run(docs, tmp_path / "out", tokenizer="")
    skipped = {item["source"]: item for item in stats["skipped"]}
    assert {s: item["reason"] for s, item in skipped.items()} == {
        "locked.docx": "encrypted",
        "truncated.docx": "corrupt",
        "zeros.docx": "corrupt",
        "old.docx": "misnamed",
        "制度.doc": "needs-conversion",
        "通知.wps": "needs-conversion",
        "台账.xlsx": "needs-conversion",
        "汇报.pptx": "needs-conversion",
    }
    assert "password" in skipped["locked.docx"]["message"]
    assert "re-save" in skipped["truncated.docx"]["message"]
    assert 'soffice --headless --convert-to docx "制度.doc"' in skipped["制度.doc"]["message"]
    assert 'soffice --headless --convert-to docx "通知.wps"' in skipped["通知.wps"]["message"]
    assert 'soffice --headless --convert-to html "台账.xlsx"' in skipped["台账.xlsx"]["message"]
    assert "convert-to docx" in skipped["old.docx"]["message"]
    assert stats["skipped_by_reason"] == {"encrypted": 1, "corrupt": 2, "misnamed": 1, "needs-conversion": 4}
    assert any("制度.doc" in r.getMessage() and "soffice" in r.getMessage() for r in caplog.records)
    # The rest of the folder proceeds.
    assert [r["source"] for r in stats["read"]] == ["good.docx"]
    assert any("第一条 为了规范公司的组织和行为" in c["text"] for c in chunks)


def test_loading_a_password_protected_docx_says_so(tmp_path):
    pytest.importorskip("msoffcrypto")
    _encrypted_docx(tmp_path / "locked.docx")
    with pytest.raises(LoadError, match="password-protected DOCX") as info:
        load(tmp_path / "locked.docx")
    assert info.value.reason is SkipReason.encrypted


# ---------------------------------------------------------------------------------------------------------------
# HTML

PORTAL_PAGE = """<!DOCTYPE html>
<html><head><meta http-equiv="Content-Type" content="text/html; charset=gb2312">
<title>某银行内网 - 制度库</title>
<style>.x { color: red }</style><script>var menu = "首页";</script></head>
<body>
<div id="header"><a href="/">内网首页</a></div>
<nav class="main-nav"><ul><li>首页</li><li>通知公告</li><li>制度库</li></ul></nav>
<div class="breadcrumb">首页 &gt; 制度库 &gt; 信息安全</div>
<div class="content">
<h1>信息安全管理办法</h1>
<h2>第一章 总则</h2>
<p>第一条　为加强信息安全管理，
   根据国家有关规定，制定本办法。</p>
<p style="display:none">隐藏的统计代码</p>
<h2>第二章 账号管理</h2>
<p>第二条　员工账号实行实名制。<br>密码长度不少于十二位。</p>
<ol><li>每九十天更换密码</li><li>不得共享账号</li></ol>
<table><tr><th>系统</th><th>负责部门</th><th>复核周期</th></tr>
<tr><td rowspan="2">核心系统</td><td>科技部</td><td>每月</td></tr>
<tr><td>运营部</td><td>每季</td></tr></table>
</div>
<div class="sidebar">相关链接：员工手册</div>
<footer>版权所有 某银行 2024</footer>
</body></html>
"""


def test_gbk_html_page_main_text_with_headings_and_table(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "办法.html").write_bytes(PORTAL_PAGE.encode("gbk"))
    # The same page with no charset declared: detected.
    (docs / "undeclared.htm").write_bytes(PORTAL_PAGE.replace("; charset=gb2312", "").encode("gbk"))
    raw = load(docs / "办法.html")
    assert raw.encoding == "gb18030"
    assert raw.pages[0].split("\n") == [
        "# 信息安全管理办法",
        "## 第一章 总则",
        "第一条 为加强信息安全管理， 根据国家有关规定，制定本办法。",
        "## 第二章 账号管理",
        "第二条 员工账号实行实名制。",
        "密码长度不少于十二位。",
        "1. 每九十天更换密码",
        "2. 不得共享账号",
        "系统 | 负责部门 | 复核周期",
        "核心系统 | 科技部 | 每月",
        "运营部 | 每季",
    ]
    assert load(docs / "undeclared.htm").pages == raw.pages
    chunks, stats = _run(docs, tmp_path / "out", tokenizer="", chunking="units", chunk_size=64, chunk_overlap=8)
    assert {r["source"]: r["encoding"] for r in stats["read"]}["办法.html"] == "gb18030"
    text = "\n".join(c["text"] for c in chunks)
    for dropped in ("内网首页", "通知公告", "制度库", "隐藏", "相关链接", "版权所有", "var menu", "color"):
        assert dropped not in text, dropped
    assert "第一条 为加强信息安全管理，根据国家有关规定，制定本办法。" in text, "spaces between CJK removed"
    first = next(c for c in chunks if "第二条" in c["text"])  # the two pages are one text: one set of chunks
    assert first["headings"] == ["信息安全管理办法", "第二章 账号管理"]


def test_html_layout_table_and_a_wrong_charset_line(tmp_path):
    page = (
        '<html><head><meta charset="gb2312"></head><body><table><tr>'
        '<td class="menu"><a>首页</a><a>公告</a></td>'
        "<td><h2>第三章 数据备份</h2><p>第九条 核心系统每日全量备份。</p>"
        "<table><tr><th>系统</th><th>周期</th></tr><tr><td>核心</td><td>每日</td></tr></table></td>"
        "</tr></table></body></html>"
    )
    # Re-saved as UTF-8 with the old charset line left in: valid UTF-8 wins over the declaration.
    (tmp_path / "layout.html").write_bytes(page.encode("utf-8"))
    raw = load(tmp_path / "layout.html")
    assert raw.encoding == "utf-8"
    lines = ["## 第三章 数据备份", "第九条 核心系统每日全量备份。", "系统 | 周期", "核心 | 每日"]
    assert raw.pages[0].split("\n") == lines


@pytest.mark.parametrize("name", ["company_law_typed", "insurance_law_autonum"])
def test_libreoffice_html_drops_running_lines_comments_and_frames(name):
    truth = _truth(name)
    text = load(OFFICE / f"{name}.html").pages[0]
    for dropped in ("内部资料", "法务复核", "图示说明文字"):
        assert dropped not in text
    assert not re.search(r"第\s*\d+\s*页", text)
    for row in truth["cells"]:
        assert " | ".join(row) in text
    assert "1. 提交公司登记申请书" in text


# ---------------------------------------------------------------------------------------------------------------
# PDFs exported by an office program


@pytest.mark.parametrize("name", ["company_law_typed", "insurance_law_autonum"])
def test_office_pdf_loses_running_lines_and_keeps_the_text(name, tmp_path):
    truth = _truth(name)
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(OFFICE / f"{name}.pdf", docs)
    chunks, stats = _run(docs, tmp_path / "out", tokenizer="", chunking="units", chunk_size=300)
    text = "\n".join(c["text"] for c in chunks)
    assert stats["read"][0]["header_footer_lines_removed"] >= 6  # a header and a footer on each of 3 pages
    assert "内部资料" not in text and not re.search(r"第\s*\d+\s*页", text)
    han = _han(text)
    for row in truth["cells"]:
        for cell in row:
            assert _han(cell) in han, cell
    for line in truth["lines"]:
        assert _han(line) in han, line
    with_label = [c for c in chunks if re.match(r"^第[一二三四五六七八九十百]+条 ", c["text"])]
    assert with_label and all(c["headings"] == truth["paths"][c["text"].split(" ")[0]] for c in with_label)


def test_docx_outline_levels_derived_styles_revisions_controls_and_nested_tables(tmp_path):
    import docx
    from docx.enum.style import WD_STYLE_TYPE
    from docx.oxml import parse_xml
    from docx.oxml.ns import nsdecls

    document = docx.Document()
    # A plain paragraph that Word's outline puts at level 1 (w:outlineLvl 0), and a company style built on Heading 2.
    outlined = document.add_paragraph("第一部分 总体要求")
    outlined._p.get_or_add_pPr().append(parse_xml(f'<w:outlineLvl {nsdecls("w")} w:val="0"/>'))
    style = document.styles.add_style("制度小标题", WD_STYLE_TYPE.PARAGRAPH)
    style.base_style = document.styles["Heading 2"]
    document.add_paragraph("适用范围", style="制度小标题")
    # Tracked changes: the insertion is read, the deletion is not.
    revised = document.add_paragraph("本办法适用于")
    revised._p.append(parse_xml(f'<w:ins {nsdecls("w")} w:id="1" w:author="a"><w:r><w:t>全体员工</w:t></w:r></w:ins>'))
    revised._p.append(
        parse_xml(f'<w:del {nsdecls("w")} w:id="2" w:author="a"><w:r><w:delText>部分员工</w:delText></w:r></w:del>')
    )
    revised.add_run("。")
    # A content control around a paragraph (templates use them for fields to fill in).
    document.element.body.insert(
        len(document.element.body) - 1,
        parse_xml(
            f"<w:sdt {nsdecls('w')}><w:sdtPr/><w:sdtContent><w:p><w:r><w:t>填报单位：信息科技部</w:t></w:r></w:p>"
            "</w:sdtContent></w:sdt>"
        ),
    )
    table = document.add_table(rows=1, cols=2)
    table.cell(0, 0).text = "外层"
    inner = table.cell(0, 1).add_table(rows=1, cols=2)
    inner.cell(0, 0).text = "内层甲"
    inner.cell(0, 1).text = "内层乙"
    document.save(str(tmp_path / "制度.docx"))

    lines = load(tmp_path / "制度.docx").pages[0].split("\n")
    assert lines == [
        "## 第一部分 总体要求",
        "### 适用范围",
        "本办法适用于全体员工。",
        "填报单位：信息科技部",
        "外层 | 内层甲 内层乙",
    ]
