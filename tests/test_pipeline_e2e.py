"""The whole CPU pipeline on real statute PDFs, in-process, with the network cut.

Every stage runs through the real CLI (download → doctor → convert → ingest → generate → train → train-reranker →
evaluate) with socket connections and DNS refused by the ``no_network`` fixture; any connection attempt fails the
test. A second run must find every stage fresh and redo (and so check) nothing.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from offline_embft import pipeline
from offline_embft.cli import app
from offline_embft.core.config import load_config
from offline_embft.evaluate.report import model_labels
from offline_embft.evaluate.run import REAL_FUSION_FILE
from offline_embft.retrieval import fusion

REPO = Path(__file__).resolve().parents[1]
PDFS = ("中华人民共和国期货和衍生品法.pdf", "中华人民共和国证券投资基金法.pdf")


@pytest.mark.slow
def test_cpu_pipeline_end_to_end_without_network(tmp_path, laws_dir, minilm_path, no_network, monkeypatch):
    monkeypatch.chdir(tmp_path)  # stamps (.make/) and any stray relative path land in the sandbox
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in PDFS:
        shutil.copy(laws_dir / "pdf" / name, docs / name)
    config = REPO / "configs" / "cpu.yaml"
    overrides = [
        f"ingest.input_dir={docs}",
        f"dataset_dir={tmp_path / 'Dataset'}",
        f"models_dir={tmp_path / 'Models'}",
        f"results_dir={tmp_path / 'results'}",
        "ingest.val_ratio=0.5",
        "train.epochs=1",
        "train.batch_size=16",
        "train_reranker.negatives=1",
        "train_reranker.max_length=128",
        "evaluate.rerank_top=5",
        f"evaluate.questions={REPO / 'data' / 'demo' / 'questions_futures_law.csv'}",
    ]
    cfg = load_config(config, overrides).resolve()
    calls: list[str] = []

    def in_process(args: list[str]) -> int:
        calls.append(args[0])
        result = CliRunner().invoke(app, args)
        if result.exit_code != 0:
            print(result.output)  # shown by pytest when the test fails
            if result.exception and not isinstance(result.exception, SystemExit):
                raise result.exception
        return result.exit_code

    report = pipeline.run(cfg, config_path=config, overrides=overrides, runner=in_process)
    assert calls == ["download", "doctor", "convert", "ingest", "generate", "train", "train-reranker", "evaluate"]

    results = tmp_path / "results"
    assert report == results / "report.md" and report.is_file()
    assert (results / "report.png").stat().st_size > 10_000
    with open(results / "metrics.csv", encoding="utf-8") as handle:
        rows = {row["model"]: row for row in csv.DictReader(handle)}
    base, tuned = model_labels(cfg.evaluate.models)
    assert tuned == "minilm-demo"
    # Base first (the report's deltas are against it), the fine-tuned model, BM25, each model fused with BM25; the
    # tuned hybrid and the reranker rows follow (checked below).
    assert list(rows)[:5] == [base, tuned, "BM25", f"{base}+BM25", f"{tuned}+BM25"]
    ndcg = {label: float(row["ndcg@10"]) for label, row in rows.items()}
    # One epoch on these two statutes took MiniLM from 0.26 to 0.39 ndcg@10 (one article per chunk; 0.14 to 0.33 with
    # sentence-packed chunks): fine-tuning must really help.
    assert ndcg[tuned] > max(1.4 * ndcg[base], ndcg[base] + 0.08), ndcg
    assert float(rows[tuned]["hit_rate@5"]) > float(rows[base]["hit_rate@5"])
    model_dir = tmp_path / "Models" / "model_outdir" / "minilm-demo"
    assert (model_dir / "modules.json").is_file()
    # ict's validation questions cannot choose the BM25 fusion weight: no fusion.json, no "+BM25 tuned" row (the
    # real questions below choose it).
    assert not (model_dir / fusion.FUSION_FILE).exists() and f"{tuned}+BM25 tuned" not in rows
    assert "skipped" in json.loads((model_dir / "train_metrics.json").read_text(encoding="utf-8"))["fusion"]
    # The second stage: the demo's reranker re-orders the fine-tuned model's and its hybrid's top 5 (demo: 10).
    assert [label for label in rows if " → " in label] == [
        "minilm-demo → minilm-demo-reranker",
        "minilm-demo+BM25 → minilm-demo-reranker",
    ]
    # The headline searches all chunks; the validation chunks alone and the real questions are reported beside it.
    text = report.read_text(encoding="utf-8")
    assert "## Full corpus vs validation chunks only" in text and "## Real questions" in text
    assert "**155** real questions" in text
    assert (results / "small_corpus" / "metrics.csv").is_file()
    assert (results / "real_questions" / "metrics.csv").is_file()
    # The fusion chosen on all the real questions, for the user to adopt: read the way evaluate reads a fusion.json.
    chosen = fusion.load(results / "real_questions", REAL_FUSION_FILE)
    assert chosen is not None, "fusion_on_real_questions.json is missing or not a valid fusion"
    assert chosen.method in (*fusion.METHODS, "model", "bm25") and 0.0 <= chosen.weight <= 1.0
    on = chosen.chosen_on
    assert on["queries"] == 155, "chosen on every real question the report counts"
    assert on["fused_ndcg@10"] >= max(on["model_ndcg@10"], on["bm25_ndcg@10"]), on
    assert len(on["candidates"]) == len(fusion.METHODS) * len(fusion.WEIGHTS)

    calls.clear()
    pipeline.run(cfg, config_path=config, overrides=overrides, runner=in_process)
    assert calls == [], f"a second run with nothing changed must redo (and so check) nothing, ran {calls}"
