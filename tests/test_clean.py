"""Chinese text cleaning: each rule on its own, then whole documents laid out as PDF extraction returns them."""

from __future__ import annotations

import pytest

from offline_embft.ingest.clean import (
    clean_pages,
    clean_text,
    is_page_number_line,
    normalize_chars,
    strip_running_lines,
    tidy_line,
)
from offline_embft.ingest.loaders import markdown_to_text


def test_line_broken_inside_a_sentence_is_joined():
    text = "为了保护公司、股东、职工和债权人的合法权益，完善中国特\n色现代企业制度，根据宪法\n，制定本法。"
    assert (
        clean_text(text)
        == "为了保护公司、股东、职工和债权人的合法权益，完善中国特色现代企业制度，根据宪法，制定本法。"
    )


def test_paragraph_breaks_are_kept_without_indentation():
    text = "第一段的第一句很长很长很长很长很长很长很长很长很长很长，\n还在第一段。\n第二段开始了。\n\n\n第三段。"
    assert (
        clean_text(text)
        == "第一段的第一句很长很长很长很长很长很长很长很长很长很长，还在第一段。\n第二段开始了。\n第三段。"
    )


def test_hard_wrapped_text_without_indentation_keeps_its_title_apart():
    lines = [
        "关于加强安全生产管理的通知",
        "为深入贯彻落实安全生产责任制，切实加强公司安全生产管理工作，有",
        "效防范各类事故的发生，保障员工生命财产安全，现就有关事项通知如",
        "下。各部门要高度重视，成立专门工作小组，明确责任分工，确保各项",
        "措施落到实处。",
        "全面排查各类安全隐患，建立台账，限期整改，整改不到位的不得复",
        "工。",
    ]
    assert clean_text("\n".join(lines)).split("\n") == [
        lines[0],
        "".join(lines[1:5]),
        "".join(lines[5:]),
    ]


def test_enumerated_items_start_paragraphs_without_indentation():
    lead = "有下列情形之一的，公司股东会、董事会的决议不成立，当事人可以向人民法院提起诉讼并请求确认"
    text = lead + "\n（一）未召开会议\n（二）未进行表决\n三、其他情形"
    assert clean_text(text).split("\n") == [
        lead,
        "（一）未召开会议",
        "（二）未进行表决",
        "三、其他情形",
    ]


def test_indented_paragraphs_join_continuations_even_after_a_full_stop():
    # pypdf marks a paragraph's first line with indentation; a line ending in 。 inside a paragraph is no break.
    lines = [
        " 第二十九条 证券公司承销证券，应当对公开发行募集文件的真实性、准确性、完整性进行核查。",
        "发现有虚假记载的，不得进行销售活动；已经销售的，必须立即停止销售活动。",
        " 证券公司承销证券，不得有下列行为：",
        " （一）进行虚假的或者误导投资者的广告宣传；",
    ]
    assert clean_text("\n".join(lines)).split("\n") == [
        "第二十九条 证券公司承销证券，应当对公开发行募集文件的真实性、准确性、完整性进行核查。"
        "发现有虚假记载的，不得进行销售活动；已经销售的，必须立即停止销售活动。",
        "证券公司承销证券，不得有下列行为：",
        "（一）进行虚假的或者误导投资者的广告宣传；",
    ]


def test_headings_and_article_numbers_stay_as_document_text():
    lines = ["第一章 总则", "第一条 为了规范公司的组织和行为，制定本法。", "第二节 股东会", "第二条 本法所称公司。"]
    assert clean_text("\n".join(lines)).split("\n") == lines


def test_spaces_between_cjk_removed_but_kept_in_english_and_numbers():
    assert tidy_line("分 类 号 ： 密 级") == "分类号：密级"
    assert tidy_line("使用 Python 3.11 与 sentence transformers 训练 ， 效果 好") == (
        "使用 Python 3.11 与 sentence transformers 训练，效果好"
    )
    assert tidy_line("  收入  增长  12.5 %  ") == "收入增长 12.5 %"


def test_english_lines_are_joined_with_a_space():
    assert clean_text("The model reads\nChinese text well.") == "The model reads Chinese text well."


def test_fullwidth_letters_and_digits_become_ascii_but_chinese_punctuation_stays():
    assert normalize_chars("ＡＢＣ－ｘｙｚ１２３，。；：（）！？、《》“”") == "ABC－xyz123，。；：（）！？、《》“”"


def test_control_and_invalid_characters_are_dropped():
    text = "a\x00b\x07c\u200bd\ufeffe\ue000f\ufffdg\u00adh\r\ni\tj"
    assert normalize_chars(text) == "abcdefgh\ni j"


def test_kangxi_radicals_and_compatibility_ideographs_become_ordinary_characters():
    # CJK fonts in PDFs often map 一/方 to Kangxi radical code points; they look the same but don't match.
    assert normalize_chars("第⼀条 ⽅式") == "第一条 方式"
    assert normalize_chars("\uf9d1") == "六"


@pytest.mark.parametrize(
    ("line", "at_edge", "expected"),
    [
        ("第 3 页", False, True),
        ("第3页 共20页", False, True),
        ("共 20 页 第 3 页", False, True),
        ("第十二页", False, True),
        ("Page 4 of 12", False, True),
        ("- 7 -", True, True),
        ("12", True, True),
        ("3 / 20", True, True),
        ("12", False, False),
        ("第三页的内容很重要。", False, False),
        ("2024年7月1日", True, False),
    ],
)
def test_page_number_lines(line, at_edge, expected):
    assert is_page_number_line(line, at_edge) is expected


BODIES = [
    ("第一条 为了加强集团内部管理，规范各部门的工作流程，提高工作效率和服务质量，", "特制定本制度。"),
    ("第二条 本制度适用于集团总部及下属各分公司、子公司的全体员工，包括试用期员", "工和实习人员。"),
    ("第三条 各部门负责人对本部门执行本制度的情况负责，并应当定期向分管领导报告", "执行情况。"),
    ("第四条 员工应当遵守国家法律法规和集团的各项规章制度，忠于职守，廉洁自律，", "保守商业秘密。"),
    ("第五条 人力资源部负责本制度的解释和修订，修订后的制度自发布之日起施行，原", "有规定同时废止。"),
]


def _pages(n: int) -> list[str]:
    """n pages with a running header, a body and a page-number footer, as pypdf returns them."""
    pages = []
    for i in range(n):
        first, rest = BODIES[i % len(BODIES)]
        pages.append("\n".join(["某某集团内部管理制度汇编", " " + first, rest, f"- {i + 1} -"]))
    return pages


def test_running_header_and_page_numbers_are_dropped():
    cleaned = clean_pages(_pages(5))
    assert "某某集团内部管理制度汇编" not in cleaned.text
    assert "- " not in cleaned.text
    assert cleaned.removed_lines == 10
    assert cleaned.text.split("\n") == ["".join(body) for body in BODIES]


def test_title_repeating_the_running_header_survives_on_page_one():
    pages = _pages(4)
    pages[0] = pages[0].replace(
        "某某集团内部管理制度汇编\n", "某某集团内部管理制度汇编\n 某某集团内部管理制度汇编\n", 1
    )
    lines, removed = strip_running_lines([p.split("\n") for p in pages])
    assert lines[0][0].strip() == "某某集团内部管理制度汇编"
    assert removed == 8


def test_sentence_running_across_pages_is_joined_and_pages_are_tracked():
    pages = [
        "公司年报\n 第一条 本条的正文从第一页开始，一直写到第一页的最后一行还没有写完，这一句话要跨\n第 1 页",
        "公司年报\n越到第二页才结束。\n 第二条 第二页的条文。\n第 2 页",
        "公司年报\n 第三条 第三页的条文，较长较长较长较长较长较长较长较长较长较长较长较长较长较长。\n第 3 页",
    ]
    cleaned = clean_pages(pages)
    first = "第一条 本条的正文从第一页开始，一直写到第一页的最后一行还没有写完，这一句话要跨越到第二页才结束。"
    assert cleaned.text.split("\n") == [
        first,
        "第二条 第二页的条文。",
        "第三条 第三页的条文，较长较长较长较长较长较长较长较长较长较长较长较长较长较长。",
    ]
    assert cleaned.pages_for(0, len(first)) == [1, 2]
    start = cleaned.text.index("第三条")
    assert cleaned.pages_for(start, start + 5) == [3]


def test_a_lone_number_in_a_one_page_text_is_kept():
    assert clean_text("2024\n\n年度报告正文。") == "2024\n年度报告正文。"


def test_markdown_headings_and_list_items_are_their_own_paragraphs():
    md = (
        "# 第一章 总则\n本制度适用于**全体员工**，详见[附件](a.md)。\n## 适用范围\n- 总部\n- 分公司\n\n"
        "| 项目 | 金额 |\n|---|---|\n| 差旅 | 100 |\n"
    )
    cleaned = clean_pages([markdown_to_text(md)], markup=True)
    assert [(cleaned.text[a:b], level) for a, b, level in cleaned.headings] == [("第一章 总则", 1), ("适用范围", 2)]
    assert cleaned.text.split("\n") == [
        "第一章 总则",
        "本制度适用于全体员工，详见附件。",
        "适用范围",
        "总部",
        "分公司",
        "项目 | 金额",
        "差旅 | 100",
    ]
