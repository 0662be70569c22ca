"""``offline-embft generate`` end to end: batching, cache and resume, retries, failure report, stats, both engines.

Clean-question assertions use a scripted engine at the backend boundary (realistic raw Qwen answers); the real
transformers backend runs on a tiny random Qwen3, whose garbage answers exercise the failure path.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from llama_index.core.bridge.pydantic import PrivateAttr
from tiny_qwen import EXTRA_CHARS, build_tiny_qwen
from typer.testing import CliRunner

from offline_embft.core.config import GenerateConfig
from offline_embft.core.dataset import QADataset
from offline_embft.core.errors import UserError
from offline_embft.generate.llm import BatchLLM, Sampling
from offline_embft.generate.run import cache_path, config_path, load_template, render, run, stats_path


def _chunk_of(prompt: str) -> str:
    return prompt.split("---------------------")[1].strip()


class ScriptedLLM(BatchLLM):
    """A backend whose engine answers like Qwen would, from a script of (chunk text, seed) → raw answer."""

    backend = "scripted"

    _script: Any = PrivateAttr()
    _interrupt_on_call: int | None = PrivateAttr(default=None)
    _calls: list[tuple[int | None, list[str]]] = PrivateAttr(default_factory=list)

    def __init__(self, script: Callable[[str, int | None], str], interrupt_on_call: int | None = None) -> None:
        super().__init__(model_name="scripted", sampling=Sampling(max_tokens=64, seed=42))
        self._script = script
        self._interrupt_on_call = interrupt_on_call

    @property
    def calls_log(self) -> list[tuple[int | None, list[str]]]:
        """(seed, prompts) of every engine call."""
        return self._calls

    def _generate(self, prompts: list[str], sampling: Sampling) -> list[str | None]:
        if self.engine_calls == self._interrupt_on_call:  # engine_calls counts this call already
            raise KeyboardInterrupt  # the user's Ctrl-C (or a crash) while this batch is in the engine
        self._calls.append((sampling.seed, list(prompts)))
        return [self._script(_chunk_of(prompt), sampling.seed) for prompt in prompts]


def qwen_like(text: str, seed: int | None) -> str:
    """Realistic raw answers; a few chunks misbehave in the ways real models do."""
    topic = text[:8]
    if text.startswith("公司是企业法人"):  # thinking left on, a numbered list (one question wanted)
        thinking = "<think>\n用户要我根据资料提问。先找关键概念……\n</think>\n\n"
        return f"{thinking}1. {topic}的含义是什么？\n2. 公司享有什么财产权？"
    if text.startswith("本法所称公司"):  # answers in English first; the retry (another seed) answers in Chinese
        return "What does this law say about companies?" if seed == 42 else f"问题：{topic}指的是哪些公司？"
    if text.startswith("有限责任公司的股东"):  # never asks a question
        return "抱歉，我无法根据这段内容提出问题。"
    if text.startswith("公司以其主要办事机构"):  # runs out of tokens while thinking, once
        return "<think>\n好的，我需要仔细阅读这段内容" if seed == 42 else f"**问题1：** {topic}承担什么责任？"
    return f"<think>\n\n</think>\n\n问题：{topic}的主要内容是什么？"


@pytest.fixture(scope="module")
def articles(laws_dir) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (laws_dir / "articles" / "company_law.jsonl").read_text("utf-8").splitlines()]
    return rows


def _write_chunks(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            record = {"id": row["id"], "text": row["text"], "source": row["law"], "pages": [1]}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


@pytest.fixture
def chunks(tmp_path, articles) -> Path:
    return _write_chunks(tmp_path / "chunks" / "train.jsonl", articles[:10])


def _cfg(**overrides: Any) -> GenerateConfig:
    return GenerateConfig(
        **{"backend": "transformers", "batch_size": 4, "max_retries": 2, "questions_per_chunk": 1, **overrides}
    )


def test_native_run_writes_a_clean_loadable_dataset_with_stats(tmp_path, chunks, articles):
    from llama_index.finetuning import EmbeddingQAFinetuneDataset

    out = tmp_path / "datasets" / "train_dataset.json"
    llm = ScriptedLLM(qwen_like)
    assert run(_cfg(), chunks, out, llm=llm) == out

    loaded = EmbeddingQAFinetuneDataset.from_json(str(out))
    dataset = QADataset.load(out)
    texts = {row["id"]: row["text"] for row in articles[:10]}
    assert loaded.corpus == texts == dataset.corpus  # every chunk, even the failed one, stays as a distractor
    assert len(loaded.queries) == 9
    for qid, question in loaded.queries.items():
        (doc,) = loaded.relevant_docs[qid]
        assert question.endswith("？") and question.startswith(texts[doc][:8])
    assert loaded.queries["art-2797-q0"] == "公司是企业法人，的含义是什么？"  # think block and numbering gone
    assert loaded.queries["art-2802-q0"] == "公司以其主要办事承担什么责任？"  # markdown and role prefix gone
    assert not any(doc == "art-2798" for docs in loaded.relevant_docs.values() for doc in docs)

    stats = json.loads(stats_path(out).read_text("utf-8"))
    assert stats["chunks"] == 10 and stats["questions"] == 9 and stats["chunks_failed"] == 1
    assert stats["filtered"]["language"] == 1 and stats["filtered"]["not_question"] == 3
    assert stats["filtered"]["empty"] == 1 and stats["thinking_unclosed"] == 1 and stats["surplus_dropped"] == 1
    # 10 chunks in batches of 4 → 3 calls; retry 1: three chunks → 1 call; retry 2: the hopeless one → 1 call.
    assert stats["engine_calls"] == 5 == llm.engine_calls and stats["attempts"] == 3
    assert stats["retried_chunks"] == 4 and stats["prompts_generated"] == 14 and stats["cache_hits"] == 0
    assert stats["failed"] == [
        {"id": "art-2798", "reasons": {"not_question": 1}, "last_answer": "抱歉，我无法根据这段内容提出问题。"}
    ]
    assert [seed for seed, _ in llm.calls_log] == [42, 42, 42, 43, 44]  # each retry with another seed
    assert stats["chunks_per_second"] > 0 and stats["backend"] == "scripted"
    assert yaml.safe_load(config_path(out).read_text("utf-8"))["batch_size"] == 4


def test_batches_group_prompts_of_similar_length(tmp_path, chunks):
    llm = ScriptedLLM(lambda text, seed: f"{text[:8]}是什么？")
    run(_cfg(batch_size=3, max_retries=0), chunks, tmp_path / "ds.json", llm=llm)
    lengths = [[len(p) for p in prompts] for _, prompts in llm.calls_log]
    assert [len(batch) for batch in lengths] == [3, 3, 3, 1]
    flat = [n for batch in lengths for n in batch]
    assert flat == sorted(flat)


def test_killed_run_resumes_with_nothing_lost_and_nothing_generated_twice(tmp_path, chunks):
    out = tmp_path / "ds.json"
    first = ScriptedLLM(qwen_like, interrupt_on_call=2)  # the second batch never comes back
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(), chunks, out, llm=first)
    assert not out.exists()
    assert len(first.calls_log) == 1
    answered_before = {(42, prompt) for prompt in first.calls_log[0][1]}
    assert len(cache_path(_cfg(), out).read_text("utf-8").splitlines()) == 4

    second = ScriptedLLM(qwen_like)
    run(_cfg(), chunks, out, llm=second)
    asked_after = [(seed, p) for seed, prompts in second.calls_log for p in prompts]
    assert len(asked_after) == len(set(asked_after))
    assert not answered_before & set(asked_after)  # the same prompt is only asked again with a retry's seed
    assert sum(seed == 42 for seed, _ in asked_after) == 6
    stats = json.loads(stats_path(out).read_text("utf-8"))
    assert stats["cache_hits"] == 4 and stats["engine_calls"] == 2 + 1 + 1
    assert stats["questions"] == 9

    third = ScriptedLLM(qwen_like)
    before = out.read_text("utf-8")
    run(_cfg(), chunks, out, llm=third)
    assert third.engine_calls == 0 and out.read_text("utf-8") == before


def test_torn_cache_line_is_tolerated_and_a_new_prompt_misses(tmp_path, chunks):
    out = tmp_path / "ds.json"
    run(_cfg(), chunks, out, llm=ScriptedLLM(qwen_like))
    cache = cache_path(_cfg(), out)
    lines = cache.read_text("utf-8").splitlines()
    with cache.open("a", encoding="utf-8") as handle:
        handle.write(lines[0][: len(lines[0]) // 2])  # a crash in the middle of a write

    again = ScriptedLLM(qwen_like)
    run(_cfg(), chunks, out, llm=again)
    assert again.engine_calls == 0
    assert cache.read_text("utf-8").endswith("\n")

    prompt = tmp_path / "prompt.txt"
    prompt.write_text(
        "资料：\n---------------------\n{context}\n---------------------\n请提出{num_questions}个问题。", "utf-8"
    )
    edited = ScriptedLLM(qwen_like)
    run(_cfg(prompt_file=str(prompt)), chunks, out, llm=edited)
    # Another prompt, other cache keys: everything is asked again (3 batches, then the two retry rounds).
    assert edited.engine_calls == 5 and json.loads(stats_path(out).read_text("utf-8"))["cache_hits"] == 0
    assert all(p.startswith("资料：") for _, prompts in edited.calls_log for p in prompts)
    assert all(json.loads(line) for line in cache.read_text("utf-8").splitlines())


def test_questions_per_chunk(tmp_path, chunks):
    def two(text: str, seed: int | None) -> str:
        return f"1. {text[:6]}的定义是什么？\n2. {text[:6]}适用于哪些情形？\n3. {text[:6]}由谁负责？"

    llm = ScriptedLLM(two)
    out = run(_cfg(questions_per_chunk=2), chunks, tmp_path / "ds.json", llm=llm)
    dataset = QADataset.load(out)
    assert len(dataset) == 20
    assert "{num_questions}" not in llm.calls_log[0][1][0] and "提出 2 个问题" in llm.calls_log[0][1][0]


def test_llamaindex_engine_same_prompt_same_cache(tmp_path, chunks, articles):
    from llama_index.finetuning import EmbeddingQAFinetuneDataset

    out = tmp_path / "ds.json"
    llm = ScriptedLLM(lambda text, seed: f"{text[:8]}是什么意思？")
    run(_cfg(engine="llamaindex"), chunks, out, llm=llm)
    loaded = EmbeddingQAFinetuneDataset.from_json(str(out))
    assert len(loaded.queries) == 10
    template = load_template()
    sent = [p for _, prompts in llm.calls_log for p in prompts]
    assert sent == [render(template, row["text"], 1) for row in articles[:10]]  # one call per chunk, our prompt
    stats = json.loads(stats_path(out).read_text("utf-8"))
    assert stats["engine"] == "llamaindex" and stats["questions"] == 10 and stats["engine_calls"] == 10
    assert not list(tmp_path.glob(".*llamaindex*"))  # its work file is gone

    again = ScriptedLLM(lambda text, seed: "不该被调用？")
    run(_cfg(engine="llamaindex"), chunks, out, llm=again)
    assert again.engine_calls == 0


def test_ict_end_to_end_masks_positives(tmp_path, articles):
    rows = articles[20:80]
    chunks = _write_chunks(tmp_path / "chunks.jsonl", rows)
    out = run(_cfg(backend="ict"), chunks, tmp_path / "ds.json")
    dataset = QADataset.load(out)
    texts = {row["id"]: row["text"] for row in rows}
    assert len(dataset) == len(rows) == 60  # a sentence of every chunk, first try or retry
    masked = 0
    for qid, query in dataset.queries.items():
        (doc,) = dataset.relevant_docs[qid]
        assert query in texts[doc]
        masked += query not in dataset.corpus[doc]
    assert masked == 38  # seeded (ict_keep_prob 0.1): the same 38 of 60 positives lose their query sentence
    assert run(_cfg(backend="ict"), chunks, tmp_path / "ds2.json").read_text("utf-8") == out.read_text("utf-8")


@pytest.fixture(scope="module")
def questionless_qwen(tmp_path_factory, articles) -> Path:
    """A tiny random Qwen3 whose vocabulary has no question mark: every answer fails the filters."""
    texts = [row["text"].replace("？", "") for row in articles[:6]] + [load_template()]
    extra = EXTRA_CHARS.replace("？", "").replace("?", "")
    return build_tiny_qwen(tmp_path_factory.mktemp("models") / "tiny-qwen3", texts, extra_chars=extra)


def test_transformers_end_to_end_reports_failures_and_caches(tmp_path, articles, questionless_qwen):
    chunks = _write_chunks(tmp_path / "chunks.jsonl", articles[:6])
    out = tmp_path / "ds.json"
    cfg = _cfg(model=str(questionless_qwen), device="cpu", max_new_tokens=8, max_retries=1)
    with pytest.raises(UserError, match="no valid question for any of the 6 chunks") as info:
        run(cfg, chunks, out)
    assert "\n" not in str(info.value) and not out.exists()
    stats = json.loads(stats_path(out).read_text("utf-8"))
    # Two batches per attempt, two attempts; every chunk reported with the model's last raw answer.
    assert stats["engine_calls"] == 4 and stats["prompts_generated"] == 12 and stats["retried_chunks"] == 6
    assert [f["id"] for f in stats["failed"]] == [row["id"] for row in articles[:6]]
    assert sum(stats["filtered"].values()) >= 12 and stats["model"] == "tiny-qwen3"
    # The last raw answer of each chunk is the model's retry answer, as cached (not an empty placeholder).
    cached = [json.loads(line) for line in cache_path(cfg, out).read_text("utf-8").splitlines()]
    retry_answers = {entry["chunk_id"]: entry["answer"] for entry in cached if entry["attempt"] == 1}
    assert len(retry_answers) == 6 and all(answer.strip() for answer in retry_answers.values())
    assert {f["id"]: f["last_answer"] for f in stats["failed"]} == {k: v[:300] for k, v in retry_answers.items()}
    assert all(sum(f["reasons"].values()) >= 1 for f in stats["failed"])
    assert config_path(out).is_file()

    with pytest.raises(UserError):
        run(cfg, chunks, out)
    stats = json.loads(stats_path(out).read_text("utf-8"))
    assert stats["engine_calls"] == 0 and stats["cache_hits"] == 12


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        ("", "holds no chunk"),
        ('{"id": "a", "text": "x"}\n{oops\n', ":2 is not valid JSON"),
        ('{"text": "公司"}\n', "no 'id' and 'text'"),
        ('{"id": "a", "text": "公司"}\n{"id": "a", "text": "股东"}\n', "repeats chunk id"),
        ('{"id": "a", "text": "  "}\n', "holds no chunk"),
    ],
)
def test_bad_chunks_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "chunks.jsonl"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message) as info:
        run(_cfg(backend="ict"), path, tmp_path / "ds.json")
    assert "\n" not in str(info.value)


def test_bad_prompt_file_and_missing_model_are_one_line_errors(tmp_path, chunks):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("请提问。", encoding="utf-8")
    with pytest.raises(UserError, match=r"no \{context\} placeholder"):
        run(_cfg(backend="ict", prompt_file=str(prompt)), chunks, tmp_path / "ds.json")
    with pytest.raises(UserError, match="not found"):
        run(_cfg(backend="ict", prompt_file=str(tmp_path / "nope.txt")), chunks, tmp_path / "ds.json")
    with pytest.raises(UserError, match="not found"):
        run(_cfg(model=str(tmp_path / "no-such-model")), chunks, tmp_path / "ds.json")
    with pytest.raises(UserError, match="--base-url"):
        run(_cfg(backend="openai"), chunks, tmp_path / "ds.json")


def test_cli_generate(tmp_path, chunks):
    from offline_embft.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["generate", str(tmp_path / "missing.jsonl"), "--backend", "ict"])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "chunks file" in errors[0]

    result = runner.invoke(app, ["generate", str(chunks), "--backend", "openai"])
    assert result.exit_code == 2 and "--base-url" in result.output

    out = tmp_path / "out" / "ds.json"
    args = ["generate", str(chunks), "--out", str(out), "--backend", "ict", "--questions-per-chunk", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(QADataset.load(out)) == 10


def test_cli_generates_both_splits_with_one_engine(tmp_path, articles, monkeypatch):
    from offline_embft.cli import app
    from offline_embft.generate import run as generate

    _write_chunks(tmp_path / "Dataset" / "chunks" / "train.jsonl", articles[:12])
    _write_chunks(tmp_path / "Dataset" / "chunks" / "val.jsonl", articles[12:18])
    built = []
    real_create = generate.create_engine
    monkeypatch.setattr(generate, "create_engine", lambda *a, **k: built.append(1) or real_create(*a, **k))
    args = ["generate", "--backend", "ict", "--set", f"dataset_dir={tmp_path / 'Dataset'}", "--set", "llm="]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert built == [1]
    assert len(QADataset.load(tmp_path / "Dataset" / "datasets" / "train_dataset.json").corpus) == 12
    assert len(QADataset.load(tmp_path / "Dataset" / "datasets" / "val_dataset.json").corpus) == 6
