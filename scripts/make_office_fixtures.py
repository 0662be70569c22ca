"""Build the office fixtures in data/office/ once: Word documents made from the statute texts, and the PDF and HTML
LibreOffice exports from them (the PDFs and web pages enterprises have come from Word/WPS, not from our renderer).

Each DOCX is written with python-docx the way office users write such documents: a title, chapter headings in
Word's heading styles (typed, or drawn by Word's auto-numbering as 第一章/第一条), justified paragraphs with a
first-line indent, a table with merged cells, a numbered and a bulleted list, a running header
("内部资料 注意保密") and a footer with a page-number field, plus a comment and a text box that are not body
text. Beside each DOCX, ``<name>.truth.json`` records the body text the document shows (the lines, headings with
their numbers, table cells), the running lines that must not appear in ingested text, and the heading path of
each article. ``scripts/bench_ingest.py`` measures the DOCX, the PDF and the HTML against it.

Needs LibreOffice (``apt-get install -y --no-install-recommends libreoffice-writer fonts-noto-cjk``).
Usage: python scripts/make_office_fixtures.py [--out data/office] [--no-export]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FONT = "Noto Sans CJK SC"
RUNNING_HEADER = "内部资料 注意保密"
_CN = "零一二三四五六七八九"


def _cn(n: int) -> str:
    if n < 10:
        return _CN[n]
    if n < 20:
        return "十" + (_CN[n - 10] if n > 10 else "")
    return _CN[n // 10] + "十" + (_CN[n % 10] if n % 10 else "")


def _articles(name: str, chapters: int, per_chapter: int) -> list[dict]:
    lines = (REPO / "data/laws/articles" / f"{name}.jsonl").read_text("utf-8").splitlines()
    rows = sorted((json.loads(line) for line in lines if line.strip()), key=lambda r: r["n"])
    picked, seen = [], []
    for row in rows:
        if row["chapter"] not in seen:
            seen.append(row["chapter"])
        if len(seen) > chapters:
            break
        if sum(1 for r in picked if r["chapter"] == row["chapter"]) < per_chapter:
            picked.append(row)
    return picked


def _set_fonts(document) -> None:
    """Chinese text in a CJK font LibreOffice has here (Noto CJK), so exports embed real glyphs."""
    from docx.oxml.ns import qn

    for style_name in ("Normal", "Title", "Heading 1", "Heading 2", "List Number", "List Bullet"):
        style = document.styles[style_name]
        rpr = style.element.get_or_add_rPr()
        fonts = rpr.find(qn("w:rFonts"))
        if fonts is None:
            fonts = rpr.makeelement(qn("w:rFonts"), {})
            rpr.append(fonts)
        for attr in ("w:eastAsia", "w:ascii", "w:hAnsi"):
            fonts.set(qn(attr), FONT)
        for attr in ("w:asciiTheme", "w:hAnsiTheme", "w:eastAsiaTheme"):
            fonts.attrib.pop(qn(attr), None)


def _body_paragraph(document, text: str):
    from docx.enum.text import WD_ALIGN_PARAGRAPH
    from docx.shared import Pt

    paragraph = document.add_paragraph(text)
    paragraph.alignment = WD_ALIGN_PARAGRAPH.JUSTIFY
    paragraph.paragraph_format.first_line_indent = Pt(21)
    return paragraph


def _page_footer(section) -> None:
    """A footer 第 N 页 共 M 页 with Word's PAGE and NUMPAGES fields."""
    from docx.enum.text import WD_ALIGN_PARAGRAPH
    from docx.oxml import parse_xml
    from docx.oxml.ns import nsdecls

    paragraph = section.footer.paragraphs[0]
    paragraph.alignment = WD_ALIGN_PARAGRAPH.CENTER
    paragraph.add_run("第 ")
    paragraph._p.append(parse_xml(f'<w:fldSimple {nsdecls("w")} w:instr="PAGE"><w:r><w:t>1</w:t></w:r></w:fldSimple>'))
    paragraph.add_run(" 页 共 ")
    paragraph._p.append(
        parse_xml(f'<w:fldSimple {nsdecls("w")} w:instr="NUMPAGES"><w:r><w:t>1</w:t></w:r></w:fldSimple>')
    )
    paragraph.add_run(" 页")
    section.header.paragraphs[0].text = RUNNING_HEADER
    section.header.paragraphs[0].alignment = WD_ALIGN_PARAGRAPH.CENTER


def _text_box(paragraph, text: str) -> None:
    """A floating VML text box anchored in ``paragraph`` (its text is not body text)."""
    from docx.oxml import parse_xml

    xml = (
        '<w:r xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main" '
        'xmlns:v="urn:schemas-microsoft-com:vml"><w:pict>'
        '<v:shape style="position:absolute;margin-left:300pt;margin-top:0;width:120pt;height:40pt;z-index:1">'
        f"<v:textbox><w:txbxContent><w:p><w:r><w:t>{text}</w:t></w:r></w:p></w:txbxContent></v:textbox>"
        "</v:shape></w:pict></w:r>"
    )
    paragraph._p.append(parse_xml(xml))


def _table(document, truth: dict) -> None:
    """A 4-column table: a header row, a cell merged across two columns and one merged down two rows."""
    rows = [
        ["事项", "责任部门", "办理时限", "备注"],
        ["公司设立登记", "登记机关", "三十日", "材料齐全的当场办理"],
        ["变更登记", "登记机关", "十五日", "涉及注册资本的须公告"],
        ["年度报告公示", "公司", "每年六月三十日前", "通过企业信用信息公示系统"],
    ]
    table = document.add_table(rows=len(rows) + 1, cols=4)
    table.style = document.styles["Table Grid"]
    for r, values in enumerate(rows):
        for c, value in enumerate(values):
            table.cell(r, c).text = value
    # Row 2's and row 3's 责任部门 are one cell merged down (the lower cell's text is dropped, as Word does).
    table.cell(1, 1).merge(table.cell(2, 1))
    table.cell(1, 1).text = "登记机关"
    last = table.cell(len(rows), 0).merge(table.cell(len(rows), 1))
    last.text = "注销登记须先清算"
    table.cell(len(rows), 2).text = "清算结束之日起三十日内"
    table.cell(len(rows), 3).text = "申请注销登记"
    cells = [
        ["事项", "责任部门", "办理时限", "备注"],
        ["公司设立登记", "登记机关", "三十日", "材料齐全的当场办理"],
        ["变更登记", "十五日", "涉及注册资本的须公告"],
        ["年度报告公示", "公司", "每年六月三十日前", "通过企业信用信息公示系统"],
        ["注销登记须先清算", "清算结束之日起三十日内", "申请注销登记"],
    ]
    truth["cells"].extend(cells)
    truth["lines"].extend(" | ".join(row) for row in cells)


def _lists(document, truth: dict) -> None:
    items = ["提交公司登记申请书", "提交公司章程", "提交法定代表人任职文件"]
    lead = "办理设立登记，应当提交下列材料："
    _body_paragraph(document, lead)
    truth["lines"].append(lead)
    for i, item in enumerate(items, start=1):
        document.add_paragraph(item, style="List Number")
        truth["lines"].append(f"{i}. {item}")
    for item in ("材料须加盖公章", "复印件须注明与原件一致"):
        document.add_paragraph(item, style="List Bullet")
        truth["lines"].append(item)


def _add_chinese_numbering(document) -> None:
    """Two lists Word draws as 第一章, 第二章 … and 第一条, 第二条 … (numIds 90 and 91)."""
    from docx.oxml import parse_xml
    from docx.oxml.ns import nsdecls, qn

    numbering = document.part.numbering_part.element
    first_num = numbering.find(qn("w:num"))
    for num_id, text in ((90, "第%1章"), (91, "第%1条")):
        abstract = parse_xml(
            f'<w:abstractNum {nsdecls("w")} w:abstractNumId="{num_id}"><w:multiLevelType w:val="singleLevel"/>'
            '<w:lvl w:ilvl="0"><w:start w:val="1"/><w:numFmt w:val="chineseCounting"/><w:suff w:val="space"/>'
            f'<w:lvlText w:val="{text}"/><w:lvlJc w:val="left"/></w:lvl></w:abstractNum>'
        )
        # abstractNum elements come before all num elements in numbering.xml.
        if first_num is not None:
            first_num.addprevious(abstract)
        else:
            numbering.append(abstract)
        numbering.append(
            parse_xml(f'<w:num {nsdecls("w")} w:numId="{num_id}"><w:abstractNumId w:val="{num_id}"/></w:num>')
        )


def _numbered(paragraph, num_id: int) -> None:
    from docx.oxml import parse_xml
    from docx.oxml.ns import nsdecls

    ppr = paragraph._p.get_or_add_pPr()
    ppr.append(parse_xml(f'<w:numPr {nsdecls("w")}><w:ilvl w:val="0"/><w:numId w:val="{num_id}"/></w:numPr>'))


def build(name: str, law: str, auto_numbered: bool, out: Path) -> None:
    import docx
    from docx.shared import Pt

    document = docx.Document()
    _set_fonts(document)
    document.styles["Normal"].font.size = Pt(11)
    if auto_numbered:
        _add_chinese_numbering(document)
    articles = _articles(law, chapters=3, per_chapter=5)
    title = articles[0]["law"]
    truth: dict = {"title": title, "lines": [], "cells": [], "running": [RUNNING_HEADER, "第#页共#页"], "paths": {}}
    document.add_paragraph(title, style="Title")
    truth["lines"].append(title)
    _page_footer(document.sections[0])
    chapter = None
    chapter_no = 0
    for article_no, row in enumerate(articles, start=1):
        if row["chapter"] != chapter:
            chapter = row["chapter"]
            chapter_no += 1
            heading = chapter.split(" ", 1)[1]
            if auto_numbered:
                _numbered(document.add_heading(heading, level=1), 90)
                chapter_line = f"第{_cn(chapter_no)}章 {heading}"
            else:
                document.add_heading(chapter, level=1)
                chapter_line = chapter
            truth["lines"].append(chapter_line)
        paragraphs = row["text"].split("\n")
        if auto_numbered:
            first = _body_paragraph(document, paragraphs[0])
            _numbered(first, 91)
            label = f"第{_cn(article_no)}条"
        else:
            first = _body_paragraph(document, f"{row['article_no']}\u3000{paragraphs[0]}")
            label = row["article_no"]
        truth["lines"].append(f"{label} {paragraphs[0]}")
        truth["paths"][label] = [title, chapter_line]
        for extra in paragraphs[1:]:
            _body_paragraph(document, extra)
            truth["lines"].append(extra)
        if article_no == 2:
            _text_box(first, "图示说明文字")
            document.add_comment(first.runs[0], text="此条需法务复核", author="审阅人")
        if article_no == 4:
            _lists(document, truth)
        if article_no == 8:
            _table(document, truth)
    document.core_properties.title = title
    path = out / f"{name}.docx"
    document.save(str(path))
    (out / f"{name}.truth.json").write_text(json.dumps(truth, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def export(docx_path: Path) -> None:
    """PDF and HTML of ``docx_path`` beside it, as LibreOffice Writer exports them."""
    soffice = shutil.which("soffice") or shutil.which("libreoffice")
    if not soffice:
        raise SystemExit("LibreOffice not found: apt-get install -y --no-install-recommends libreoffice-writer")
    with tempfile.TemporaryDirectory() as profile:
        for target in ("pdf", "html"):
            subprocess.run(
                [
                    soffice,
                    f"-env:UserInstallation=file://{profile}",
                    "--headless",
                    "--convert-to",
                    target,
                    "--outdir",
                    str(docx_path.parent),
                    str(docx_path),
                ],
                check=True,
                capture_output=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "data" / "office")
    parser.add_argument("--no-export", action="store_true", help="write the DOCX files only")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, law, auto in (
        ("company_law_typed", "company_law", False),
        ("insurance_law_autonum", "insurance_law", True),
    ):
        build(name, law, auto, args.out)
        if not args.no_export:
            export(args.out / f"{name}.docx")
    for path in sorted(args.out.iterdir()):
        print(f"{path.stat().st_size:>8}  {path}")


if __name__ == "__main__":
    main()
