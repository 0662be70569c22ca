"""Data-parallel generation: N engine replicas in their own processes, merged through the answer cache.

Replicas are real processes (spawned, as on a GPU server); their engines are the real ict and transformers backends
(tiny random Qwen3), or a scripted engine where a replica must die at a chosen moment (SIGKILL, as the kernel's OOM
killer would do it).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
from scale_engines import dying_question_engine, question_engine
from tiny_qwen import build_tiny_qwen
from typer.testing import CliRunner

from offline_embft.core.config import GenerateConfig, load_config
from offline_embft.core.dataset import QADataset
from offline_embft.core.errors import UserError
from offline_embft.generate.answer_cache import AnswerCache
from offline_embft.generate.run import cache_path, load_template, run, stats_path
from offline_embft.generate.scale import ReplicaPool, replicas
from offline_embft.generate.scale.replicas import plan_replicas

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def articles(laws_dir) -> list[dict[str, Any]]:
    path = laws_dir / "articles" / "company_law.jsonl"
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def _write_chunks(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"id": r["id"], "text": r["text"], "source": r["law"], "pages": [1]}, ensure_ascii=False)
        for r in rows
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _cfg(**overrides: Any) -> GenerateConfig:
    return GenerateConfig(**{"backend": "ict", "batch_size": 2, "max_retries": 0, **overrides})


def _cached(path: Path) -> dict[str, str]:
    return {json.loads(line)["key"]: json.loads(line)["answer"] for line in path.read_text("utf-8").splitlines()}


def test_a_killed_replica_loses_no_cached_answer_and_the_rerun_completes(tmp_path, articles):
    chunks = _write_chunks(tmp_path / "chunks.jsonl", articles[:10])
    out = tmp_path / "ds.json"
    cfg = _cfg(data_parallel_size="2")
    # 10 prompts → 5 per replica in batches of 2; replica 1 is killed as its second batch starts.
    dying = functools.partial(dying_question_engine, die_replica="1", die_on_call=2)
    pool = ReplicaPool(cfg, template=load_template(), factory=dying)
    try:
        assert pool.size == 2 and pool.identity == "question-script:question-script"
        with pytest.raises(
            UserError, match=r"replica 1 \(cpu.*\) was killed by SIGKILL before answering 3 of its"
        ) as info:
            run(cfg, chunks, out, llm=pool)
    finally:
        pool.close()
    assert "run the same command again" in str(info.value) and not out.exists()
    cached = _cached(cache_path(cfg, out))
    assert len(cached) == 5 + 2  # replica 0's whole shard and replica 1's first batch, all on disk

    pool = ReplicaPool(cfg, template=load_template(), factory=functools.partial(question_engine))
    try:
        run(cfg, chunks, out, llm=pool)
    finally:
        pool.close()
    stats = json.loads(stats_path(out).read_text("utf-8"))
    assert stats["cache_hits"] == 7 and stats["prompts_generated"] == 3  # only what was missing
    assert stats["replicas"] == 2 and sum(r["answers"] for r in stats["per_replica"]) == 3
    assert len(QADataset.load(out).queries) == 10
    assert all(_cached(cache_path(cfg, out))[key] == answer for key, answer in cached.items())


def test_two_replicas_write_the_same_dataset_as_one(tmp_path, articles):
    from offline_embft.cli import app

    chunks = _write_chunks(tmp_path / "chunks.jsonl", articles[20:44])
    one = run(_cfg(data_parallel_size="1"), chunks, tmp_path / "one.json")
    two = tmp_path / "two.json"
    args = ["generate", str(chunks), "--out", str(two), "--backend", "ict", "--batch-size", "4"]
    result = CliRunner().invoke(app, [*args, "--data-parallel-size", "2", "--set", "generate.max_retries=0"])
    assert result.exit_code == 0, result.output
    assert two.read_text("utf-8") == one.read_text("utf-8")  # the real ict backend, in two replica processes
    stats = json.loads(stats_path(two).read_text("utf-8"))
    assert stats["replicas"] == 2 and len(stats["replica_devices"]) == 2 and stats["backend"] == "ict"
    rows = stats["per_replica"]
    assert [r["replica"] for r in rows] == [0, 1] and [r["answers"] for r in rows] == [12, 12]
    assert all(r["engine_calls"] == 3 and r["answers_per_second"] > 0 for r in rows)
    assert json.loads(stats_path(one).read_text("utf-8"))["replicas"] == 1
    result = CliRunner().invoke(app, [*args, "--data-parallel-size", "zero"])
    assert result.exit_code == 2 and "data_parallel_size must be auto" in result.output


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory, articles) -> Path:
    texts = [row["text"] for row in articles[:6]] + [load_template()]
    return build_tiny_qwen(tmp_path_factory.mktemp("models") / "tiny-qwen3", texts)


def test_transformers_replicas_answer_every_prompt_as_one_engine_does(tmp_path, articles, tiny_qwen):
    """Seeded per prompt: the same answers whichever replica, batch or neighbours a prompt gets."""
    chunks = _write_chunks(tmp_path / "chunks.jsonl", articles[:6])
    base = {"backend": "transformers", "model": str(tiny_qwen), "device": "cpu", "max_new_tokens": 8, "batch_size": 4}
    answers = {}
    for size in ("1", "2"):
        cfg = _cfg(**base, data_parallel_size=size, cache_dir=str(tmp_path / f"cache{size}"))
        with pytest.raises(UserError, match="no valid question"):  # a random model asks no real question
            run(cfg, chunks, tmp_path / f"ds{size}.json")
        answers[size] = _cached(cache_path(cfg, tmp_path / f"ds{size}.json"))
    assert len(answers["1"]) == 6 and answers["2"] == answers["1"]
    # The cache is shared across replica counts: the same keys, so a rerun with any N reuses them.
    with AnswerCache(cache_path(_cfg(cache_dir=str(tmp_path / "cache2")), tmp_path / "ds2.json")) as cache:
        assert set(answers["1"]) <= {k for k in answers["2"] if k in cache}


def test_replica_plan_pins_gpu_groups_and_shares_cpu_cores(monkeypatch):
    monkeypatch.setattr(replicas, "visible_gpus", lambda: [])
    assert plan_replicas(_cfg(backend="transformers", device="auto")).size == 1  # auto without GPUs
    monkeypatch.setattr(replicas.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    plan = plan_replicas(_cfg(data_parallel_size="2"))
    assert plan.cpu_sets == [[0, 1], [2, 3]] and plan.environment(1)["OMP_NUM_THREADS"] == "2"

    monkeypatch.setattr(replicas, "visible_gpus", lambda: ["0", "1", "2", "3", "4", "5", "6", "7"])
    plan = plan_replicas(_cfg(backend="vllm", model="Qwen3-8B"))  # auto: 8 GPUs, one per engine
    assert plan.size == 8 and plan.environment(5)["CUDA_VISIBLE_DEVICES"] == "5"
    plan = plan_replicas(_cfg(backend="vllm", model="Qwen3-32B"))  # the preset's tensor parallel size is 2
    assert plan.size == 4 and plan.gpu_groups[1] == ["2", "3"] and plan.device(3) == "cuda:6,7"
    assert (
        plan_replicas(_cfg(backend="vllm", model="Qwen3-8B", tensor_parallel_size=4, data_parallel_size="2")).size == 2
    )
    with pytest.raises(UserError, match="needs 12 GPUs, but 8 are visible"):
        plan_replicas(_cfg(backend="vllm", model="Qwen3-8B", tensor_parallel_size=4, data_parallel_size="3"))
    assert plan_replicas(_cfg(backend="openai", base_url="http://a:8000", data_parallel_size="4")).size == 1


def test_scale_keys_are_validated_and_settable(tmp_path):
    cfg = load_config(None, ["generate.data_parallel_size=4", "generate.ray_address=auto", "train.nproc=2"])
    assert (cfg.generate.data_parallel_size, cfg.generate.ray_address, cfg.train.nproc) == ("4", "auto", "2")
    for override, message in [
        ("generate.data_parallel_size=0", "data_parallel_size must be auto or a whole number"),
        ("generate.data_parallel_size=many", "data_parallel_size must be auto"),
        ("generate.ray_address=10.0.0.1:6379", "ray_address must be empty, local, auto or ray://"),
        ("train.nproc=-1", "train.nproc must be auto or a whole number"),
    ]:
        with pytest.raises(UserError, match=message):
            load_config(None, [override])
