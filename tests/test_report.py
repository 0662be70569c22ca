"""report.py: tables, verdict, chart (CJK labels without tofu) and atomic file writing, on hand-made metrics."""

from __future__ import annotations

import csv
import io
import json
import warnings

import pytest

from offline_embft.evaluate import report
from offline_embft.evaluate.report import MAIN_METRICS, METRIC_COLUMNS, Report, Row
from offline_embft.evaluate.report import chart as report_chart


def _metrics(base: float) -> dict[str, float]:
    return {m: min(1.0, base + 0.01 * i) for i, m in enumerate(METRIC_COLUMNS)}


def _report(n: int = 200, dataset: str = "results/验证集.json") -> Report:
    # The fine-tuned model ranks the answer first where the base model ranks it third: a clear, one-sided gain.
    base = Row("bce-embedding-base_v1-st", "model", "Models/bce-st", _metrics(0.40), [3] * n, {"seconds": 12.5})
    tuned = Row("微调模型", "model", "Models/model_outdir/微调模型", _metrics(0.70), [1] * (n - 10) + [None] * 10)
    bm25 = Row("BM25", "bm25", "BM25 (jieba)", _metrics(0.55), [2] * n)
    hybrid = Row("微调模型+BM25", "hybrid", "RRF", _metrics(0.72), [1] * n, parent="微调模型")
    return Report(dataset=dataset, n_queries=n, n_corpus=300, rows=[base, tuned, bm25, hybrid])


def test_csv_has_contract_columns_and_full_precision():
    rows = _report().rows
    parsed = list(csv.reader(io.StringIO(report.metrics_csv(rows))))
    assert parsed[0] == ["model", *METRIC_COLUMNS]
    assert parsed[0][-1] == "hit_rate@5" and parsed[0][1] == "accuracy@1"
    assert [r[0] for r in parsed[1:]] == ["bce-embedding-base_v1-st", "微调模型", "BM25", "微调模型+BM25"]
    assert float(parsed[1][1]) == rows[0].metrics["accuracy@1"]
    assert all(0.0 <= float(v) <= 1.0 for r in parsed[1:] for v in r[1:])


def test_json_twin_matches_csv():
    rep = _report()
    data = json.loads(report.render(rep)["metrics.json"])
    assert data["reference"] == "bce-embedding-base_v1-st"
    assert [r["model"] for r in data["results"]] == [r.label for r in rep.rows]
    assert data["results"][1]["ndcg@10"] == rep.rows[1].metrics["ndcg@10"]
    assert data["results"][1]["source"] == "Models/model_outdir/微调模型"


def test_sign_test():
    assert report.sign_test(0, 0) == 1.0
    assert report.sign_test(5, 5) == 1.0
    assert report.sign_test(10, 0) == pytest.approx(2 / 1024)
    assert report.sign_test(190, 0) < 1e-10


def test_verdict_says_better_and_beats_bm25():
    lines = report.verdict(_report())
    text = "\n".join(lines)
    assert "`微调模型` vs `bce-embedding-base_v1-st` (first model): better than the reference" in text
    assert "+30.0 points" in text  # hit_rate@5 0.85 vs 0.55
    assert "higher on 190 questions and lower on 10" in text
    assert "Best model `微调模型` beats BM25" in text
    assert "Hybrid `微调模型+BM25`" in text


def test_verdict_no_clear_difference_and_worse():
    n = 40
    base = Row("base", "model", "b", _metrics(0.5), [1, 2] * (n // 2))
    same = Row("tuned", "model", "t", _metrics(0.51), [2, 1] * (n // 2))  # wins and losses cancel
    worse = Row("worse", "model", "w", _metrics(0.2), [5] * n)
    bm25 = Row("BM25", "bm25", "x", _metrics(0.9), [1] * n)
    text = "\n".join(report.verdict(Report("d.json", n, 50, [base, same, worse, bm25])))
    assert "`tuned` vs `base` (first model): no clear difference from the reference" in text
    assert "could be chance" in text
    assert "`worse` vs `base` (first model): worse than the reference" in text
    assert "loses to BM25" in text
    assert "Only 40 questions" in text
    twin = Row("twin", "model", "t", dict(base.metrics), list(base.gold_ranks))
    text = "\n".join(report.verdict(Report("d.json", n, 50, [base, twin])))
    assert "no clear difference" in text and "the same on every question" in text


def test_markdown_has_deltas_dataset_paths_and_chart():
    md = report.markdown(_report())
    assert "| `微调模型` | 0.850 (+0.300) |" in md  # hit_rate@5 is the first main column, delta vs the first row
    assert "`bce-embedding-base_v1-st` (reference) | 0.550 |" in md
    assert "200 questions, 300 passages" in md
    assert "`Models/model_outdir/微调模型`" in md
    assert "![Main metrics per model](report.png)" in md


def test_chart_draws_cjk_labels_without_missing_glyphs():
    rep = _report()
    labels, title, fonts = report_chart.chart_labels(rep)
    assert labels[1] == "微调模型" and "验证集" in title
    assert fonts is not None and len(fonts) == 2  # DejaVu Sans + a CJK font
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        png = report_chart.chart_png(rep, MAIN_METRICS)
    assert not [w for w in caught if "missing from" in str(w.message)], [str(w.message) for w in caught]
    assert png.startswith(b"\x89PNG") and len(png) > 20_000


def test_bundled_cjk_font_covers_common_chinese():
    from matplotlib.ft2font import FT2Font

    assert report_chart.BUNDLED_CJK_FONT.is_file()
    charmap = FT2Font(str(report_chart.BUNDLED_CJK_FONT)).get_charmap()
    assert all(ord(c) in charmap for c in "期货和衍生品法的立法目的是什么？微调模型验证集ABCabc0123")


def test_chart_falls_back_to_ascii_labels_without_a_cjk_font(monkeypatch):
    monkeypatch.setattr(report_chart, "_cjk_font_paths", lambda: [])
    rep = _report()
    labels, title, fonts = report_chart.chart_labels(rep)
    assert fonts is None
    assert labels == ["bce-embedding-base_v1-st", "model-2", "BM25", "model-4"]
    assert title.isascii()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report_chart.chart_png(rep, MAIN_METRICS)
    assert not [w for w in caught if "missing from" in str(w.message)]


def test_write_files_is_atomic_and_complete(tmp_path):
    files = report.render(_report())
    written = report.write_files(tmp_path / "out", files)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(files)
    assert written["report.png"].read_bytes() == files["report.png"]
    assert written["report.md"].read_text(encoding="utf-8") == files["report.md"]


def test_a_new_row_kind_is_one_registration(monkeypatch):
    """A toy kind registered once shows in the kind column, the chart's colours, the verdict and metrics.json; an
    unregistered name is refused, naming the known kinds."""
    from offline_embft.evaluate.report import rows as rows_mod

    monkeypatch.setattr(rows_mod, "ROW_KINDS", dict(rows_mod.ROW_KINDS))
    toy = rows_mod.register_row_kind(
        rows_mod.RowKind(
            "toy",
            "toy set (general)",
            color="parent",
            hatch=lambda row: "++",
            verdict=lambda rep: [f"{len(rep.of_kind(rows_mod.row_kind('toy')))} toy row(s) scored."],
        )
    )
    rep = _report()
    ranks = [4] * rep.n_queries
    rep.rows.append(Row("微调模型 on toy", "toy", "toy questions", _metrics(0.3), ranks, parent="微调模型"))
    assert rep.rows[-1].kind is toy and toy == "toy"
    md = report.markdown(rep)
    assert "| `微调模型 on toy` | toy set (general) | toy questions |" in md
    assert "- 1 toy row(s) scored." in md
    colors = report_chart._colors(rep)
    assert colors[-1] == (colors[1][0], "++")  # the parent model's colour, the kind's hatch
    assert json.loads(report.render(rep)["metrics.json"])["results"][-1]["kind"] == "toy"
    known = r"known: model, bm25, hybrid, rerank, (.+, )?toy$"  # kinds registered elsewhere may sit between
    with pytest.raises(ValueError, match=rf"unknown report row kind 'nope'; {known}"):
        Row("x", "nope", "", _metrics(0.1))


def test_row_kinds_survive_copies_and_pickles():
    import copy
    import dataclasses
    import pickle

    row = _report().rows[2]
    assert pickle.loads(pickle.dumps(row)).kind is report.BM25
    assert copy.deepcopy(row).kind is report.BM25
    assert dataclasses.asdict(row)["kind"] is report.BM25
