"""Generation through Ray Data actors: a local Ray instance gives the same dataset as one in-process engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from offline_embft.core.config import GenerateConfig
from offline_embft.core.errors import UserError
from offline_embft.generate.run import run, stats_path

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def articles(laws_dir) -> list[dict[str, Any]]:
    path = laws_dir / "articles" / "company_law.jsonl"
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def _write_chunks(path: Path, rows: list[dict[str, Any]]) -> Path:
    lines = [json.dumps({"id": r["id"], "text": r["text"]}, ensure_ascii=False) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_ray_local_gives_the_same_dataset_as_one_engine(tmp_path, articles):
    chunks = _write_chunks(tmp_path / "chunks.jsonl", articles[30:50])
    cfg = GenerateConfig(backend="ict", batch_size=4, max_retries=0)
    one = run(cfg, chunks, tmp_path / "one.json")

    ray_cfg = GenerateConfig(backend="ict", batch_size=4, max_retries=0, ray_address="local", data_parallel_size="2")
    two = run(ray_cfg, chunks, tmp_path / "ray.json")  # the real ict backend in two Ray Data actors
    assert not ray.is_initialized()  # a local instance started by the run is shut down by it
    assert two.read_text("utf-8") == one.read_text("utf-8")
    stats = json.loads(stats_path(two).read_text("utf-8"))
    assert stats["ray_address"] == "local" and stats["replicas"] == 2 and stats["backend"] == "ict"
    assert sum(r["answers"] for r in stats["per_replica"]) == 20 and stats["engine_calls"] == 5
    assert stats["cache_hits"] == 0


def test_ray_refuses_the_openai_backend_before_connecting(tmp_path):
    with pytest.raises(UserError, match="backend openai already spreads requests"):
        run(
            GenerateConfig(backend="openai", base_url="http://127.0.0.1:9", ray_address="auto"),
            _write_chunks(tmp_path / "c.jsonl", [{"id": "a", "text": "公司是企业法人。"}]),
            tmp_path / "ds.json",
        )
