"""Question extraction and filters on realistic raw outputs of Qwen-family models."""

from __future__ import annotations

import pytest

from offline_embft.generate.questions import (
    FilterSettings,
    QuestionFilter,
    copied_share,
    extract_questions,
    language,
    strip_thinking,
)

CHUNK = (
    "公司是企业法人，有独立的法人财产，享有法人财产权。公司以其全部财产对公司的债务承担责任。"
    "有限责任公司的股东以其认缴的出资额为限对公司承担责任；股份有限公司的股东以其认购的股份为限对公司承担责任。"
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # Qwen3 with enable_thinking=False or /no_think: an empty think block before the answer.
        ("<think>\n\n</think>\n\n公司的债务由谁承担？", ["公司的债务由谁承担？"]),
        # Thinking mode left on: a full reasoning block, then a numbered list.
        (
            "<think>\n嗯，用户要我根据这段公司法条文提问。首先看第一句……应该问股东责任。\n</think>\n\n"
            "1. 有限责任公司的股东以什么为限承担责任？\n2. 股份有限公司股东的责任范围如何确定？",
            ["有限责任公司的股东以什么为限承担责任？", "股份有限公司股东的责任范围如何确定？"],
        ),
        # A template that opens <think> in the prompt: the answer has only the closing tag.
        ("好的，我先分析资料内容。\n</think>\n\n公司享有哪些财产权？", ["公司享有哪些财产权？"]),
        # Every numbering style, a lead-in and a closing remark.
        (
            "以下是根据资料生成的问题：\n\n1、公司法的立法目的是什么？\n（2）公司法依据哪部法律制定？\n"
            "一、什么是有限责任公司？\n- 股东享有哪些权利？\n• 公司的合法权益是否受法律保护？\n"
            "①哪些主体的合法权益受公司法保护？\n3) 公司能否发行股票？\n(4) 董事会的职权有哪些？\n"
            "第5个问题：监事会由谁组成？\n希望这些问题对您有帮助！",
            [
                "公司法的立法目的是什么？",
                "公司法依据哪部法律制定？",
                "什么是有限责任公司？",
                "股东享有哪些权利？",
                "公司的合法权益是否受法律保护？",
                "哪些主体的合法权益受公司法保护？",
                "公司能否发行股票？",
                "董事会的职权有哪些？",
                "监事会由谁组成？",
            ],
        ),
        # Markdown, role prefixes, an answer that must not count as a question.
        ("**问题1：** 公司是否具有独立的法人财产？\n**答案：** 是的。", ["公司是否具有独立的法人财产？"]),
        ("assistant: 问：股东会的职权有哪些？", ["股东会的职权有哪些？"]),
        ("生成的问题：公司以哪些财产对债务承担责任？", ["公司以哪些财产对债务承担责任？"]),
        ("Q1: 公司的法人财产权包括什么？\nA1: 占有、使用、收益和处分。", ["公司的法人财产权包括什么？"]),
        ("## 问题\n> 什么是“关联关系”？", ["什么是“关联关系”？"]),
        ("【问题】`股份有限公司`的股东承担什么责任？", ["股份有限公司的股东承担什么责任？"]),
        # Quotes around the whole question go; quoted terms inside it stay; an unpaired quote left by the cut goes.
        ("“公司的债务由谁承担？”", ["公司的债务由谁承担？"]),
        ("问题：“控股股东”在公司法中是如何定义的？", ["“控股股东”在公司法中是如何定义的？"]),
        ("什么是“关联关系？”", ["什么是关联关系？"]),
        ("《公司法》的立法目的是什么？", ["《公司法》的立法目的是什么？"]),
        # Text after the question mark is cut; two questions on one line are two questions.
        ("公司的债务由谁承担？（答案：公司以其全部财产承担）", ["公司的债务由谁承担？"]),
        ("1. 股东会的职权有哪些？ 2. 董事会由多少人组成?", ["股东会的职权有哪些？", "董事会由多少人组成?"]),
        # "第一条" starts a real question; it is not numbering.
        ("第一条规定了公司法的哪些立法目的？", ["第一条规定了公司法的哪些立法目的？"]),
        ("1.5倍的表决权如何计算？", ["1.5倍的表决权如何计算？"]),
        ("Question 1: What is the purpose of the Company Law?", ["What is the purpose of the Company Law?"]),
    ],
)
def test_extracts_clean_questions(raw, expected):
    assert extract_questions(raw).candidates == expected


def test_strip_thinking_flags_an_unclosed_block():
    text, unclosed = strip_thinking("<think>\n好的，我需要仔细阅读这段内容，然后生成问题。这段话讲的是")
    assert (text, unclosed) == ("", True)
    text, unclosed = strip_thinking("前言<think>推理</think>问题？")
    assert (text, unclosed) == ("前言问题？", False)


def test_lines_without_question_mark_are_counted_not_kept():
    extraction = extract_questions("以下是问题：\n公司是企业法人。\n希望对你有帮助！")
    assert extraction.candidates == []
    assert extraction.not_questions == 2  # the lead-in ending in a colon is not counted


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("<think>\n\n</think>\n\n", "empty"),
        ("<think>\n我先想一想这段话的意思", "empty"),
        ("公司是企业法人。", "not_question"),
        ("是吗？", "too_short"),
        ("公司" * 80 + "是什么？", "too_long"),
        ("What is the liability of a company to its creditors?", "language"),
        ("公司以其全部财产对公司的债务承担责任？", "near_copy"),
    ],
)
def test_each_filter_counts_its_reason(raw, reason):
    questions = QuestionFilter()
    kept, dropped = questions.select(raw, CHUNK, 1)
    assert kept == []
    assert dropped == {reason: 1}
    assert questions.dropped[reason] == 1
    assert sum(questions.dropped.values()) == 1


def test_duplicates_are_dropped_across_chunks_ignoring_punctuation():
    questions = QuestionFilter()
    assert questions.select("公司的债务由谁承担？", CHUNK, 1)[0] == ["公司的债务由谁承担？"]
    kept, dropped = questions.select("1. 公司的债务 由谁承担?", CHUNK, 1)
    assert kept == [] and dropped == {"duplicate": 1}


def test_select_keeps_at_most_the_limit_and_counts_the_surplus():
    questions = QuestionFilter()
    kept, _ = questions.select("1. 公司享有什么权利？\n2. 股东承担什么责任？\n3. 公司的财产归谁所有？", CHUNK, 2)
    assert kept == ["公司享有什么权利？", "股东承担什么责任？"]
    assert questions.surplus == 1
    # The surplus question was not kept, so it is not a duplicate later.
    assert questions.select("公司的财产归谁所有？", CHUNK, 1)[0] == ["公司的财产归谁所有？"]


def test_a_chinese_question_with_english_terms_matches_a_chinese_chunk():
    assert language("IPO的审核流程是什么？") == "zh"
    assert language("What does 公司 mean in this law?") == "other"
    assert language("12345") is None
    questions = QuestionFilter()
    assert questions.select("IPO与公司的法人财产有什么关系？", CHUNK, 1)[0]


def test_an_english_chunk_wants_an_english_question():
    chunk = "A company is an enterprise legal person with independent property and the right to it."
    questions = QuestionFilter()
    assert questions.select("公司是什么？", chunk, 1)[1] == {"language": 1}
    assert questions.select("What kind of property does a company hold?", chunk, 1)[0]


def test_near_copy_measures_the_verbatim_span():
    assert copied_share("公司以其全部财产对公司的债务承担责任？", CHUNK) == 1.0
    assert copied_share("公司的债务由谁承担？", CHUNK) < 0.9
    # A question reusing the chunk's words around a question word is kept at the default ratio.
    assert QuestionFilter().select("公司是企业法人吗？", CHUNK, 1)[0] == ["公司是企业法人吗？"]


def test_pseudo_query_profile_keeps_statements_copied_from_the_chunk():
    questions = QuestionFilter(FilterSettings(require_question=False, check_copy=False))
    kept, dropped = questions.select("公司以其全部财产对公司的债务承担责任", CHUNK, 1)
    assert kept == ["公司以其全部财产对公司的债务承担责任"] and not dropped


def test_an_owner_asking_again_is_not_a_duplicate_of_itself():
    questions = QuestionFilter()
    answer = "1. 公司的债务由谁承担？\n2. 公司的债务由谁承担？"  # the model repeats itself within one answer
    assert questions.select(answer, CHUNK, 2, owner="prompt-a") == (["公司的债务由谁承担？"], {"duplicate": 1})
    # The same prompt asked again (a user calling complete() twice) gets its question again ...
    assert questions.select(answer, CHUNK, 2, owner="prompt-a")[0] == ["公司的债务由谁承担？"]
    # ... another prompt (another chunk) does not, and neither does the native engine (no owner).
    assert questions.select(answer, CHUNK, 2, owner="prompt-b") == ([], {"duplicate": 2})
    assert questions.select(answer, CHUNK, 2) == ([], {"duplicate": 2})
