"""Metrics → the files people read: metrics.csv, metrics.json, report.md and report.png.

Everything is rendered in memory first (:func:`render`) so that the caller can write all files at once, after the
last number is known: a failure halfway leaves the previous results untouched instead of a mix of old and new.

The chart is drawn by :mod:`offline_embft.evaluate.report.chart`; the typed rows, the row kinds (each with its label,
chart style and findings) and the verdict are in :mod:`offline_embft.evaluate.report.rows`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from offline_embft.evaluate.report.chart import chart_png
from offline_embft.evaluate.report.retention import RETENTION, retention_rows  # noqa: F401  (registers the kind)
from offline_embft.evaluate.report.rows import (  # noqa: F401  (re-exported: the report's public names)
    BM25,
    HYBRID,
    MODEL,
    RERANK,
    ROW_KINDS,
    Report,
    Row,
    RowKind,
    compare_ranks,
    register_row_kind,
    row_kind,
    sign_test,
    verdict,
)

logger = logging.getLogger(__name__)

# metrics.csv column order, which scripts rely on (README, "The outputs and how to read the report"): model, then
# these, all fractions in [0, 1].
METRIC_COLUMNS = (
    "accuracy@1",
    "accuracy@3",
    "accuracy@5",
    "accuracy@10",
    "precision@1",
    "precision@3",
    "precision@5",
    "precision@10",
    "recall@1",
    "recall@3",
    "recall@5",
    "recall@10",
    "ndcg@10",
    "mrr@10",
    "map@100",
    "hit_rate@5",
)
# What the report table and the chart show; the rest is in metrics.csv and the "All metrics" table.
MAIN_METRICS = ("hit_rate@5", "accuracy@1", "recall@10", "mrr@10", "ndcg@10", "map@100")


# ---------------------------------------------------------------------------------------------------------------
# Tables


def metrics_csv(rows: list[Row]) -> str:
    """metrics.csv: column ``model`` then :data:`METRIC_COLUMNS`, one row per model/baseline, full precision."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", *METRIC_COLUMNS])
    for row in rows:
        writer.writerow([row.label, *(repr(float(row.metrics[m])) for m in METRIC_COLUMNS)])
    return buffer.getvalue()


def metrics_json(report: Report) -> dict[str, Any]:
    """metrics.json: the CSV's numbers (same keys) plus the dataset, each row's kind and path, and the settings."""
    return {
        "dataset": report.dataset,
        "queries": report.n_queries,
        "corpus": report.n_corpus,
        "created": report.created,
        "reference": report.reference.label,
        "settings": report.settings,
        "results": [
            {
                "model": row.label,
                "kind": row.kind.name,
                "source": row.source,
                **{m: float(row.metrics[m]) for m in METRIC_COLUMNS},
                "info": row.info,
            }
            for row in report.rows
        ],
    }


def _fmt(value: float) -> str:
    return f"{value:.3f}"


def _delta(value: float, reference: float) -> str:
    diff = value - reference
    if abs(diff) < 0.0005:
        return "±0"
    return f"{diff:+.3f}"


# ---------------------------------------------------------------------------------------------------------------
# Markdown


def _table(header: list[str], body: list[list[str]], text_columns: int = 1) -> list[str]:
    """A markdown table: the first ``text_columns`` columns left-aligned, the (numeric) rest right-aligned."""
    align = ["---" if i < text_columns else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines.extend("| " + " | ".join(cells) + " |" for cells in body)
    return lines


def _row_source(row: Row) -> str:
    return f"`{row.source}`" if row.kind.source_is_path else row.source


def markdown(report: Report, chart_name: str = "report.png") -> str:
    """report.md: verdict, main table with deltas against the first row, chart, dataset, models, all metrics."""
    ref = report.reference
    out = [f"# Retrieval evaluation: {Path(report.dataset).name}", ""]
    out += [f"- {line}" for line in verdict(report)]
    out += ["", "## Main metrics", ""]
    body = []
    for row in report.main_rows:
        cells = [f"`{row.label}`" + (" (reference)" if row is ref else "")]
        for metric in MAIN_METRICS:
            value = row.metrics[metric]
            cells.append(_fmt(value) if row is ref else f"{_fmt(value)} ({_delta(value, ref.metrics[metric])})")
        body.append(cells)
    out += _table(["model", *MAIN_METRICS], body)
    out += [
        "",
        f"All numbers are fractions in [0, 1]; higher is better. In parentheses: the difference from `{ref.label}`.",
        "",
        f"![Main metrics per model]({chart_name})",
        "",
        "## Dataset",
        "",
        f"- file: `{report.dataset}`",
        f"- {report.n_queries} questions, {report.n_corpus} passages, "
        f"{report.relevant_per_query:.2f} relevant passage(s) per question on average",
        "",
        "## Models and baselines",
        "",
    ]
    body = []
    for row in report.main_rows:
        info = row.info
        truncated = info.get("truncated_passages")
        body.append(
            [
                f"`{row.label}`",
                row.kind.label,
                _row_source(row),
                str(info.get("max_seq_length", "")),
                "" if truncated is None else f"{truncated} / {report.n_corpus}",
                f"{info['seconds']:.1f}" if "seconds" in info else "",
                f"{info['ms_per_query']:.0f}" if "ms_per_query" in info else "",
            ]
        )
    header = ["model", "kind", "path / method", "max_seq_length", "passages truncated", "seconds", "rerank ms/query"]
    out += _table(header, body, text_columns=3)
    settings = ", ".join(f"{k}={v!r}" for k, v in report.settings.items())
    out += ["", f"Settings: {settings}." if settings else "", "", "## All metrics", ""]
    body = [[f"`{row.label}`", *(f"{row.metrics[m]:.4f}" for m in METRIC_COLUMNS)] for row in report.main_rows]
    out += _table(["model", *METRIC_COLUMNS], body)
    for kind in ROW_KINDS.values():  # rows measured elsewhere (retention's general sets), under their own heading
        if kind.section is not None and report.of_kind(kind):
            out += ["", *kind.section(report)]
    out += [
        "",
        "## How to read this",
        "",
        "- **hit_rate@5**: share of questions whose right passage is among the 5 passages retrieved first — what a "
        "RAG pipeline with top_k=5 hands to the LLM (the number LlamaIndex's fine-tuning guide reports; equal to "
        "accuracy@5).",
        "- **accuracy@k**: share of questions with at least one right passage in the top k.",
        "- **precision@k / recall@k**: share of the top k that is right / share of the right passages found in the "
        "top k.",
        "- **mrr@10**: average of 1/rank of the first right passage (1 = always first, 0.5 = typically second), 0 "
        "if not in the top 10.",
        "- **ndcg@10**: like mrr@10 but counts every right passage, discounted by position; the single number to "
        "compare models by.",
        "- **map@100**: mean average precision over the top 100.",
        "- Per-question results (top 10 of every model and the right ids) are in `predictions.jsonl`: look at "
        "questions every model misses to find bad questions or chunking problems.",
        "",
        f"Generated {report.created} by `offline-embft evaluate`.",
        "",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------------
# Row labels

BM25_LABEL = "BM25"
# Directory names that say nothing about the model: its parent is added to the label.
GENERIC_DIR_NAMES = frozenset({"model", "models", "output", "outputs", "final", "best", "best_model", "last", "st"})


def model_labels(paths: Sequence[str]) -> list[str]:
    """Short readable row names: each directory's name, with parent directories added where two collide or where
    the name alone says nothing (``model``, ``checkpoint-500``)."""
    # abspath, not resolve: a symlinked run directory keeps the name the user gave it.
    parts = [Path(os.path.abspath(os.path.expanduser(p))).parts or (str(p),) for p in paths]
    depth = [2 if len(p) > 1 and _generic(p[-1]) else 1 for p in parts]
    while True:
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth, strict=True)]
        grow = [
            i
            for i, label in enumerate(labels)
            if depth[i] < len(parts[i]) and any(o == label and parts[j] != parts[i] for j, o in enumerate(labels))
        ]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    seen: dict[str, int] = {}
    unique = []
    for label in labels:  # the same directory given twice
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    # A model directory named like the BM25 row must not be mistaken for it.
    return [f"{label} (model)" if label == BM25_LABEL else label for label in unique]


def _generic(name: str) -> bool:
    return name.lower() in GENERIC_DIR_NAMES or bool(re.fullmatch(r"(checkpoint|step|epoch)[-_]?\d+", name.lower()))


# ---------------------------------------------------------------------------------------------------------------
# All files


def render(report: Report) -> dict[str, str | bytes]:
    """Every report file's content by name: metrics.csv, metrics.json, report.md, report.png."""
    if not report.rows:
        raise ValueError("a report needs at least one row")
    return {
        "metrics.csv": metrics_csv(report.rows),
        "metrics.json": json.dumps(metrics_json(report), ensure_ascii=False, indent=2) + "\n",
        "report.md": markdown(report),
        "report.png": chart_png(report, MAIN_METRICS),
    }


def write_files(out_dir: str | Path, files: dict[str, str | bytes]) -> dict[str, Path]:
    """Write rendered files into ``out_dir``, each atomically (a temporary name, then a rename)."""
    from offline_embft.core.io import atomic_open

    written = {}
    for name, content in files.items():
        path = Path(out_dir) / name
        with atomic_open(path, "wb" if isinstance(content, bytes) else "w") as handle:
            handle.write(content)
        written[name] = path
    return written
