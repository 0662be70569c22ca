"""Retention: did fine-tuning cost the model its general ability? The report's rows for the general sets.

Every model of an evaluation is also scored on each general retrieval set (C-MTEB subsamples that ``download``
fetched, or the user's own BEIR/JSON sets). Those scores are rows of the kind :data:`RETENTION`, one per (model,
set), labelled ``<model> @ <set>``: in metrics.csv and metrics.json beside the other rows, and in report.md and
report.png under their own heading, each with its difference from the first model (the base) on the same set. The
verdict says plainly when a model lost more than the margin (``evaluate.retention_margin``, default 0.02 ndcg@10)
on a set, and what to do about it.
"""

from __future__ import annotations

from typing import Any

from offline_embft.evaluate.report.rows import MODEL, Report, Row, RowKind, comparison, register_row_kind

SET_KEY = "general_set"  # row.info: which general set the row was measured on
MARGIN_KEY = "retention_margin"  # row.info: the loss in ndcg@10 the verdict tolerates
REMEDY = (
    "To keep it: turn on the merge (`train.weight_ensemble: true` with `general.sets` configured: train then mixes "
    "the fine-tuned weights with the base model's, keeping as much of the domain gain as a loss of at most the "
    "margin here allows), or train fewer epochs or with a lower learning rate."
)


def retention_rows(set_name: str, rows: list[Row], margin: float) -> list[Row]:
    """The model rows of one general set's evaluation as retention rows (``<model> @ <set>``), each pointing at the
    first model's row on the set (its ``parent``: what its delta is against)."""
    models = [r for r in rows if r.kind == MODEL]
    if not models:
        return []
    base = f"{models[0].label} @ {set_name}"
    return [
        Row(
            f"{row.label} @ {set_name}",
            RETENTION,
            row.source,
            row.metrics,
            row.gold_ranks,
            {**row.info, SET_KEY: set_name, MARGIN_KEY: margin, "model": row.label},
            parent="" if i == 0 else base,
        )
        for i, row in enumerate(models)
    ]


def _pairs(report: Report) -> list[tuple[Row, Row]]:
    """(row, the base's row on the same set) for every retention row but the bases."""
    by_label = {r.label: r for r in report.of_kind(RETENTION)}
    return [(r, by_label[r.parent]) for r in report.of_kind(RETENTION) if r.parent in by_label]


def _verdict(report: Report) -> list[str]:
    """Per general set and model: lost more than the margin (with the remedy), or kept its general ability."""
    lines = []
    for row, base in _pairs(report):
        set_name, margin = row.info[SET_KEY], row.info[MARGIN_KEY]
        model, base_model = row.info["model"], base.info["model"]
        new, old = row.metrics["ndcg@10"], base.metrics["ndcg@10"]
        _, sentence = comparison(row, base)
        numbers = f"ndcg@10 {old:.3f} → {new:.3f} ({new - old:+.3f}; margin {margin:g})"
        if old - new > margin:
            lines.append(
                f"**Retention: `{model}` lost general ability on `{set_name}`: {numbers}, more than the margin "
                f"against `{base_model}`.** {sentence} {REMEDY}"
            )
        else:
            lines.append(
                f"**Retention: `{model}` kept its general ability on `{set_name}`:** {numbers}, within the margin "
                f"against `{base_model}`."
            )
    return lines


def _section(report: Report) -> list[str]:
    """report.md: the general sets, every model on each, with the difference from the base model there."""
    rows = report.of_kind(RETENTION)
    by_label = {r.label: r for r in rows}
    margin = rows[0].info[MARGIN_KEY]
    lines = [
        "## Retention on general sets",
        "",
        "The same models on general retrieval sets (not your documents): what fine-tuning cost, or kept, of the "
        f"base model's general ability. In parentheses: the difference from the first model on the same set; a "
        f"loss of more than {margin:g} ndcg@10 is flagged in the verdict above.",
        "",
        "| general set | model | queries | passages | hit_rate@5 | accuracy@1 | mrr@10 | ndcg@10 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        base = by_label.get(row.parent)
        cells = []
        for metric in ("hit_rate@5", "accuracy@1", "mrr@10", "ndcg@10"):
            value = row.metrics[metric]
            delta = "" if base is None else f" ({value - base.metrics[metric]:+.3f})"
            cells.append(f"{value:.3f}{delta}")
        lines.append(
            f"| {row.info[SET_KEY]} | `{row.info['model']}`{' (base)' if base is None else ''} | "
            f"{row.info.get('queries', '')} | {row.info.get('passages', '')} | " + " | ".join(cells) + " |"
        )
    lines += ["", "Per-set details (BM25 and every metric): `general/<set>/report.md`."]
    return lines


def _panel(ax: Any, rows: list[Row]) -> None:
    """report.png's retention panel: ndcg@10 per general set, one bar per model, the delta from the base on top."""
    import numpy as np

    sets = list(dict.fromkeys(r.info[SET_KEY] for r in rows))
    models = list(dict.fromkeys(r.info["model"] for r in rows))
    by_key = {(r.info[SET_KEY], r.info["model"]): r for r in rows}
    width = min(0.8 / len(models), 0.18)  # one or two sets: bars as wide as the main chart's, not the whole panel
    x = np.arange(len(sets))
    colors = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]
    for i, model in enumerate(models):
        values = [by_key[(s, model)].metrics["ndcg@10"] if (s, model) in by_key else 0.0 for s in sets]
        bars = ax.bar(
            x + (i - (len(models) - 1) / 2) * width, values, width * 0.92, label=model, color=colors[i % len(colors)]
        )
        texts = []
        for s, value in zip(sets, values, strict=True):
            base = by_key.get((s, models[0]))
            delta = "" if i == 0 or base is None else f"\n{value - base.metrics['ndcg@10']:+.3f}"
            texts.append(f"{value:.2f}{delta}")
        ax.bar_label(bars, labels=texts, fontsize=7, padding=2)
    ax.set_xticks(x, sets, fontsize=9)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("ndcg@10")
    ax.set_title("Retention on general sets (ndcg@10; under each value: the difference from the base)", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, title="model", alignment="left")


RETENTION = register_row_kind(
    RowKind(
        "retention",
        "general set (retention)",
        source_is_path=True,
        verdict=_verdict,
        section=_section,
        panel=_panel,
    )
)
