"""Our CustomLLM inside LlamaIndex's ``generate_qa_embedding_pairs`` gives clean questions.

Against a loopback OpenAI-compatible server answering like Qwen3 (tests/qwen3_server.py: think blocks, 问题：and
生成的问题： prefixes, numbering, quotes, explanations, and unusable first answers), through the real LlamaIndex loop
(llama-index-finetuning 0.4, whose ``generate_qa_embedding_pairs`` retries ``llm.complete`` on any Exception). A
question is dirty unless it is exactly one the server meant for its chunk.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import pytest
from qwen3_server import Qwen3LikeServer, chunk_of, true_questions
from typer.testing import CliRunner

from offline_embft.core.config import GenerateConfig
from offline_embft.core.dataset import QADataset
from offline_embft.core.errors import UserError
from offline_embft.generate.llm import NoQuestionError, create_llm
from offline_embft.generate.prompt import builtin_template, llamaindex_template, load_template, render
from offline_embft.generate.questions import PromptShape

# Keys of the stats file the native engine writes about questions; --engine llamaindex must write them too.
QUESTION_STATS = {
    "questions",
    "chunks_with_questions",
    "chunks_short",
    "chunks_failed",
    "filtered",
    "surplus_dropped",
    "thinking_unclosed",
    "engine_errors",
    "attempts",
    "retried_chunks",
    "prompts_generated",
    "failed",
}


@pytest.fixture(scope="module")
def articles(laws_dir) -> list[dict[str, Any]]:
    """40 statute articles, eight from each of the five laws."""
    rows = []
    for path in sorted((laws_dir / "articles").glob("*.jsonl")):
        rows += [json.loads(line) for line in path.read_text("utf-8").splitlines()[10:18]]
    return rows


@pytest.fixture
def server():
    srv = Qwen3LikeServer(failure_share=0.3)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def generate_qa_embedding_pairs():
    from offline_embft.generate.llamaindex_engine import import_generate_qa_embedding_pairs

    return import_generate_qa_embedding_pairs()


def _chunks_file(tmp_path: Path, rows: list[dict[str, Any]]) -> Path:
    path = tmp_path / "chunks.jsonl"
    path.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}, ensure_ascii=False) + "\n" for r in rows))
    return path


def _covered(server: Qwen3LikeServer, dataset: QADataset) -> tuple[list[str], set[str]]:
    """Dirty questions, and the chunks with at least one clean question."""
    dirty = server.dirty(dataset.queries, dataset.relevant_docs, dataset.corpus)
    clean_docs = {docs[0] for qid, docs in dataset.relevant_docs.items() if dataset.queries[qid] not in dirty}
    return dirty, clean_docs


def test_engine_llamaindex_gives_clean_questions_and_native_stats(tmp_path, articles, server):
    from offline_embft.cli import app

    chunks = _chunks_file(tmp_path, articles)
    args = ["generate", str(chunks), "--backend", "openai", "--base-url", server.url, "--model", "Qwen3-8B"]
    args += ["--questions-per-chunk", "1"]  # one per chunk: the counts below compare chunks with questions
    result = CliRunner().invoke(app, [*args, "--engine", "llamaindex", "--out", str(tmp_path / "li.json")])
    assert result.exit_code == 0, result.output
    dataset = QADataset.load(tmp_path / "li.json")

    dirty, covered = _covered(server, dataset)
    assert dirty == []
    assert len(covered) >= 0.97 * len(articles)
    assert set(dataset.corpus) == {r["id"] for r in articles}
    # The server really answered dirty (otherwise this test proves nothing): most answers were not bare questions.
    truth = {q for qs in server.truth.values() for q in qs}
    assert sum(answer.strip() not in truth for answer in server.answers) > len(articles) // 2

    stats = json.loads((tmp_path / "li.stats.json").read_text("utf-8"))
    assert stats["engine"] == "llamaindex" and set(stats) >= QUESTION_STATS
    assert stats["questions"] == len(dataset.queries) == stats["chunks_with_questions"] == len(articles)
    # Unusable first answers were counted, retried with another seed (as LlamaIndex's loop asks again) and recovered.
    assert stats["unusable_answers"] >= 5 and stats["retried_chunks"] == stats["unusable_answers"]
    assert stats["filtered"]["empty"] >= 1 and stats["filtered"]["not_question"] >= 1
    assert stats["prompts_generated"] == len(server.requests) == len(articles) + stats["retried_chunks"]
    assert sorted({r["run_seed"] for r in server.requests}) == [42, 43]

    native = CliRunner().invoke(app, [*args, "--engine", "native", "--out", str(tmp_path / "native.json")])
    assert native.exit_code == 0, native.output
    native_stats = json.loads((tmp_path / "native.stats.json").read_text("utf-8"))
    assert set(native_stats) >= QUESTION_STATS
    # Same answers, same cleaning: the same questions for every chunk, and the same counts.
    native_questions = QADataset.load(tmp_path / "native.json")
    assert sorted(native_questions.queries.values()) == sorted(dataset.queries.values())
    for key in ("questions", "chunks_failed", "filtered", "thinking_unclosed"):
        assert native_stats[key] == stats[key], key


def test_user_code_generate_qa_embedding_pairs_with_our_llm(tmp_path, articles, server, generate_qa_embedding_pairs):
    from llama_index.core.schema import TextNode

    llm = create_llm(backend="openai", model="Qwen3-8B", base_url=server.url)
    nodes = [TextNode(id_=r["id"], text=r["text"]) for r in articles]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LlamaIndex warns when a chunk got fewer questions than asked
        # LlamaIndex's own default prompt (English, "setup 2 questions"), as the blog recipes call it.
        result = generate_qa_embedding_pairs(
            nodes=nodes, llm=llm, num_questions_per_chunk=2, output_path=str(tmp_path / "qa.json"), verbose=False
        )
    llm.close()
    dataset = QADataset(
        queries=dict(result.queries),
        corpus={r["id"]: r["text"] for r in articles},
        relevant_docs={k: list(v) for k, v in result.relevant_docs.items()},
    )
    dirty, covered = _covered(server, dataset)
    assert dirty == []
    assert len(covered) >= 0.97 * len(articles)
    # As many as the prompt asked for: two for nearly every chunk (the server sometimes repeats a question).
    assert len(dataset.queries) >= 1.9 * len(articles)
    assert llm.cleaner.failures >= 5 and llm.cleaner.filter.dropped["empty"] >= 1


def test_complete_cleans_by_default_and_raw_returns_the_text_untouched(server):
    llm = create_llm(backend="openai", model="Qwen3-8B", base_url=server.url)
    raw_llm = create_llm(backend="openai", model="Qwen3-8B", base_url=server.url, raw=True)
    text = "有限责任公司的股东以其认缴的出资额为限对公司承担责任。股份有限公司的股东以其认购的股份为限对公司承担责任。"
    prompt = render(load_template(), text, 2)
    expected = true_questions(text, 2, 42)
    server_answer = server.answer(prompt, 42)
    assert server_answer.strip() != "\n".join(expected)  # the server wraps them

    assert llm.complete(prompt).text == "\n".join(expected)
    assert "".join(piece.delta for piece in llm.stream_complete(prompt)) == "\n".join(expected)
    assert llm.complete_batch([prompt]) == ["\n".join(expected)]
    assert raw_llm.complete(prompt).text == server_answer
    assert "".join(piece.delta for piece in raw_llm.stream_complete(prompt)) == server_answer
    assert raw_llm.complete_batch([prompt]) == [server_answer]
    assert llm.complete_batch([prompt], raw=True) == [server_answer]
    # The same prompt asked again is answered again (it is not a duplicate of itself).
    assert llm.complete(prompt).text == "\n".join(expected)
    llm.close()
    raw_llm.close()


def test_nothing_usable_raises_what_the_llamaindex_loop_catches_and_counts_it(
    tmp_path, articles, generate_qa_embedding_pairs
):
    from llama_index.core.schema import TextNode

    hopeless = articles[3]["text"]
    server = Qwen3LikeServer(failure_share=0.0, hopeless=frozenset({hopeless}))
    try:
        llm = create_llm(backend="openai", model="Qwen3-8B", base_url=server.url)
        prompt = render(builtin_template(), hopeless, 1)
        with pytest.raises(NoQuestionError, match=r"no usable question .*not_question 1.*抱歉") as info:
            llm.complete(prompt)
        assert isinstance(info.value, Exception) and "\n" not in str(info.value)
        assert llm.complete_batch([prompt]) == [None]
        assert llm.cleaner.failures == 2

        # Through the real loop: retried retry_limit times, each with the next seed, then skipped.
        nodes = [TextNode(id_=r["id"], text=r["text"]) for r in articles[:6]]
        before = len(server.requests)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = generate_qa_embedding_pairs(
                nodes=nodes,
                llm=llm,
                qa_generate_prompt_tmpl=llamaindex_template(builtin_template()),
                num_questions_per_chunk=1,
                retry_limit=3,
                output_path=str(tmp_path / "qa.json"),
                verbose=False,
            )
        asked = [(chunk_of(r["messages"][-1]["content"]), r["run_seed"]) for r in server.requests[before:]]
        assert [seed for chunk, seed in asked if chunk == hopeless] == [44, 45, 46]  # after the 2 failures above
        assert len(result.queries) == 5 and articles[3]["id"] not in {d[0] for d in result.relevant_docs.values()}
        assert llm.cleaner.failures == 5
        llm.close()
    finally:
        server.close()


def test_engine_llamaindex_reports_a_hopeless_chunk_like_native(tmp_path, articles, caplog):
    from offline_embft.generate.run import run

    hopeless = articles[5]
    server = Qwen3LikeServer(failure_share=0.3, hopeless=frozenset({hopeless["text"]}))
    try:
        chunks = _chunks_file(tmp_path, articles[:12])
        cfg = GenerateConfig(
            backend="openai", base_url=server.url, model="Qwen3-8B", engine="llamaindex", questions_per_chunk=1
        )
        with caplog.at_level(logging.WARNING):
            out = run(cfg, chunks, tmp_path / "li.json")
    finally:
        server.close()
    stats = json.loads(out.with_name("li.stats.json").read_text("utf-8"))
    assert stats["chunks_failed"] == 1 and stats["questions"] == 11
    assert stats["failed"] == [
        {"id": hopeless["id"], "reasons": {"not_question": 1}, "last_answer": "抱歉，我无法根据这段内容提出问题。"}
    ]
    assert hopeless["id"] in QADataset.load(out).corpus  # stays as a distractor, as in native
    assert "1 of 12 chunks got no valid question" in caplog.text


def test_prompt_shapes_read_the_chunk_and_the_count_back():
    text = "公司以其全部财产对公司的债务承担责任。{不是占位符}"
    ours = PromptShape(builtin_template())
    assert ours.match(render(builtin_template(), text, 3)) == (text, 3)
    theirs = PromptShape(llamaindex_template(builtin_template()))
    prompt = llamaindex_template(builtin_template()).format(context_str=text, num_questions_per_chunk=2)
    assert prompt == render(builtin_template(), text, 2)
    assert theirs.match(prompt) == (text, 2)
    braces = PromptShape("Context {{json}}:\n{context_str}\nAsk {num_questions_per_chunk} questions, {{x}}.")
    assert braces.match("Context {json}:\n甲乙\nAsk 4 questions, {x}.") == ("甲乙", 4)
    assert ours.match("公司是什么？") is None
    assert PromptShape("{context}").match("甲乙") == ("甲乙", None)


def test_create_llm_keywords_and_errors(server):
    llm = create_llm(backend="openai", base_url=server.url, model="Qwen/Qwen3-8B", temperature=0.2, max_new_tokens=64)
    assert llm.model_name == "Qwen3-8B" and llm.sampling.temperature == 0.2 and llm.metadata.num_output == 64
    assert not llm.raw
    base = GenerateConfig(backend="openai", base_url=server.url, seed=7)
    assert create_llm(base, model="Qwen3-8B").sampling.seed == 7  # a config, then keywords on top
    with pytest.raises(UserError, match=r"unknown setting.*tempreature") as info:
        create_llm(backend="openai", base_url=server.url, tempreature=0.2)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="backend must be one of"):
        create_llm(backend="gpt")
