"""Round-trip filtering of generated questions, and several questions per chunk kept out of one batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from offline_embft.core.config import GenerateConfig
from offline_embft.core.dataset import QADataset
from offline_embft.generate import roundtrip
from offline_embft.generate.questions import questions_per_chunk
from offline_embft.generate.run import run, stats_path

CHUNKS = {
    "c-shareholders": "股东会由全体股东组成，股东会是公司的权力机构，依照本法行使职权。",
    "c-insurance": "保险合同是投保人与保险人约定保险权利义务关系的协议。投保人应当支付保险费。",
    "c-futures": "期货交易应当遵循公开、公平、公正的原则，禁止欺诈、操纵市场和内幕交易。",
}
QUESTIONS = {
    # (question, own chunk): the first two name their chunk's words; the third is about another chunk's topic;
    # the fourth shares no word with any chunk.
    "q1": ("股东会由哪些股东组成？", "c-shareholders"),
    "q2": ("保险合同中投保人要支付保险费吗？", "c-insurance"),
    "q3": ("期货交易禁止哪些欺诈和操纵行为？", "c-shareholders"),
    "q4": ("今天天气如何？", "c-futures"),
}


def _dataset() -> QADataset:
    return QADataset(
        queries={q: text for q, (text, _) in QUESTIONS.items()},
        corpus=dict(CHUNKS),
        relevant_docs={q: [doc] for q, (_, doc) in QUESTIONS.items()},
    )


def test_bm25_round_trip_keeps_questions_that_find_their_chunk_and_counts_the_rest():
    kept, stats = roundtrip.filter_dataset(_dataset(), "bm25", k=1)
    assert set(kept.queries) == {"q1", "q2"}
    assert stats["questions_checked"] == 4 and stats["questions_kept"] == 2
    assert stats["dropped"] == {"not_in_bm25_top1": 2}
    assert stats["chunks_left_without_question"] == 1  # c-futures lost its only (bad) question
    assert kept.corpus == CHUNKS  # every chunk stays as a distractor
    # The question BM25 cannot match at all ranks its chunk last (ties count against it), not first.
    query_ids, ranks = roundtrip.question_ranks(_dataset(), "bm25")
    assert dict(zip(query_ids, ranks.tolist(), strict=True))["q4"] == len(CHUNKS)


def test_ties_count_against_the_question():
    scores = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.1], [0.1, 0.9, 0.3]])
    assert roundtrip.ranks_of_positives(scores, [[0], [1], [1]]).tolist() == [3, 2, 1]


def test_model_and_fused_round_trips(minilm_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_path), device="cpu")
    for mode, reason in (("model", "not_in_model_top2"), ("both", "not_in_fused_top2")):
        kept, stats = roundtrip.filter_dataset(_dataset(), mode, k=2, model=model)
        assert stats["questions_kept"] + sum(stats["dropped"].values()) == 4
        assert set(stats["dropped"]) <= {reason}
        assert len(kept.queries) == stats["questions_kept"]


def test_roundtrip_model_missing_is_one_line_error(tmp_path):
    from offline_embft.core.errors import UserError

    with pytest.raises(UserError, match="roundtrip"):
        roundtrip.apply(GenerateConfig(roundtrip="both", roundtrip_model=""), _dataset())
    with pytest.raises(UserError, match=str(tmp_path)):
        roundtrip.apply(GenerateConfig(roundtrip="model", roundtrip_model=str(tmp_path)), _dataset())


def test_generate_applies_the_round_trip_and_reports_its_drops(tmp_path):
    chunks = tmp_path / "chunks.jsonl"
    chunks.write_text(
        "".join(json.dumps({"id": cid, "text": text}, ensure_ascii=False) + "\n" for cid, text in CHUNKS.items()),
        encoding="utf-8",
    )
    out = tmp_path / "ds.json"
    cfg = GenerateConfig(backend="ict", questions_per_chunk=1, roundtrip="bm25", roundtrip_k=1, ict_keep_prob=1.0)
    run(cfg, chunks, out)
    stats = json.loads(stats_path(out).read_text(encoding="utf-8"))
    assert stats["roundtrip"]["mode"] == "bm25"
    kept = stats["roundtrip"]["questions_kept"]
    assert kept == stats["questions_after_roundtrip"] == len(QADataset.load(out).queries)
    assert kept + sum(stats["roundtrip"]["dropped"].values()) == stats["questions"]


@pytest.mark.parametrize(
    ("setting", "chunks", "expected"), [(2, 10, 2), (0, 10, 3), (0, 999, 3), (0, 1000, 2), (0, 4999, 2), (0, 5000, 1)]
)
def test_questions_per_chunk_is_sized_by_the_corpus(setting, chunks, expected):
    assert questions_per_chunk(setting, chunks) == expected


def test_questions_of_one_chunk_never_share_a_batch(tmp_path):
    """Several questions share their chunk as positive: NO_DUPLICATES (every column compared) keeps them apart."""
    from sentence_transformers import SentenceTransformer, models
    from tiny_encoders import build_tiny_bert

    from offline_embft.core.config import TrainConfig
    from offline_embft.train import embedder as train

    path = build_tiny_bert(tmp_path / "bert")
    model = SentenceTransformer(modules=[models.Transformer(str(path)), models.Pooling(32, "mean")], device="cpu")
    rows = [{"anchor": f"问题{c}-{q}？", "positive": f"段落{c}。"} for c in range(12) for q in range(3)]
    cfg = TrainConfig(model=str(path), out_dir=str(tmp_path / "out"), batch_size=8)
    trainer = train._build_trainer(model, rows, cfg, None, Path(tmp_path / "ckpt"), "fp32", [])
    batches = list(trainer.get_train_dataloader().batch_sampler)
    assert sum(len(b) for b in batches) >= len(rows) - 8
    for batch in batches:
        positives = [rows[i]["positive"] for i in batch]
        assert len(positives) == len(set(positives)), batch


def test_the_validation_set_is_never_round_trip_filtered(tmp_path):
    """Filtered by BM25, validation questions would make BM25 look perfect when train picks checkpoint and fusion."""
    from offline_embft.generate.run import run_many

    chunks = tmp_path / "chunks.jsonl"
    chunks.write_text(
        "".join(json.dumps({"id": cid, "text": text}, ensure_ascii=False) + "\n" for cid, text in CHUNKS.items()),
        encoding="utf-8",
    )
    cfg = GenerateConfig(backend="ict", questions_per_chunk=1, roundtrip="bm25", roundtrip_k=1)
    train_out, val_out = tmp_path / "train.json", tmp_path / "val.json"
    run_many(cfg, [(chunks, train_out), (chunks, val_out)], validation=[val_out])
    train_stats = json.loads(stats_path(train_out).read_text(encoding="utf-8"))
    val_stats = json.loads(stats_path(val_out).read_text(encoding="utf-8"))
    assert train_stats["roundtrip"]["mode"] == "bm25" and val_stats["roundtrip"] == {"mode": "off"}
    assert val_stats["questions_after_roundtrip"] == val_stats["questions"]
