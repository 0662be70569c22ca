"""The typed rows of a report and the registry of row kinds.

A row is one ranked list of results (:class:`Row`); a report is every row of one evaluation run (:class:`Report`).
What a row's kind means for the report lives on its :class:`RowKind`, registered once: the label of the "kind"
column, whether its source is a path, how the chart draws it, and what the verdict says about it. The markdown
(:mod:`offline_embft.evaluate.report`), the chart (:mod:`offline_embft.evaluate.report.chart`) and the rankings ask
the kind, never a name test; a new kind of row is one :func:`register_row_kind` call beside the code that makes it.

A kind is a ``str`` subclass equal to its name, so metrics.json keeps writing ``"kind": "model"`` and rows made from
plain names (``Row(..., "bm25", ...)``) are turned into the registered kind.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

# Differences a sign test cannot tell from chance at this level are called "no clear difference".
SIGNIFICANCE = 0.05
BM25_COLOR = "#8C8C8C"  # the chart's grey: BM25's bars, and those of a row whose parent is not in the report
# Hatches of reranked rows (drawn in their retriever's colour): fine-tuned reranker, base reranker.
RERANK_HATCHES = {"fine-tuned": "xx", "base": ".."}


class RowKind(str):
    """A kind of report row, equal to its name, carrying what the report does with rows of it.

    Attributes:
        label: The report's "kind" column.
        source_is_path: The row's source is a model path (shown as code), not a description.
        color: How the chart colours its bars: ``own`` (a colour of its own from the chart's palette),
            ``parent`` (its parent row's colour) or a fixed colour.
        hatch: The chart's hatch for a row of this kind (``""``: solid bars).
        verdict: The report's plain-language findings about rows of this kind (called with the whole report).
        section: For rows measured on another dataset (retention's general sets): report.md's section of their own
            (markdown lines, called with the whole report); such rows stay out of the main tables and the main chart.
        panel: How the chart draws such rows in a panel of their own (called with a matplotlib Axes and the rows).
    """

    label: str
    source_is_path: bool
    color: str
    hatch: Callable[[Row], str]
    verdict: Callable[[Report], list[str]]
    section: Callable[[Report], list[str]] | None
    panel: Callable[[Any, list[Row]], None] | None

    def __new__(
        cls,
        name: str,
        label: str,
        *,
        source_is_path: bool = False,
        color: str = "own",
        hatch: Callable[[Row], str] = lambda row: "",
        verdict: Callable[[Report], list[str]] = lambda report: [],
        section: Callable[[Report], list[str]] | None = None,
        panel: Callable[[Any, list[Row]], None] | None = None,
    ) -> RowKind:
        kind = super().__new__(cls, name)
        kind.label, kind.source_is_path, kind.color, kind.hatch, kind.verdict = (
            label,
            source_is_path,
            color,
            hatch,
            verdict,
        )
        kind.section, kind.panel = section, panel
        return kind

    @property
    def name(self) -> str:
        return str.__str__(self)

    def __reduce__(self) -> tuple[Callable[[str], RowKind], tuple[str]]:
        # Copies and pickles (dataclasses.asdict deep-copies) are the registered kind itself.
        return row_kind, (self.name,)


ROW_KINDS: dict[str, RowKind] = {}  # name → kind, in registration order: the order of the verdict's findings


def register_row_kind(kind: RowKind) -> RowKind:
    """Add ``kind`` to the registry (a second registration under the same name replaces the first) and return it."""
    ROW_KINDS[kind.name] = kind
    return kind


def row_kind(name: str) -> RowKind:
    """The registered kind named ``name``; a ValueError naming the known kinds for any other name."""
    if isinstance(name, RowKind) and ROW_KINDS.get(name.name) is name:
        return name
    try:
        return ROW_KINDS[str(name)]
    except KeyError:
        raise ValueError(f"unknown report row kind {name!r}; known: {', '.join(ROW_KINDS)}") from None


@dataclass
class Row:
    """One ranked list of results: an embedding model, BM25, a hybrid of both, a reranked list, ...

    Attributes:
        label: Short readable name (a model's directory name, ``BM25``, ``<model>+BM25``).
        kind: The row's :class:`RowKind` (a registered kind's name is turned into the kind).
        source: The model path, or how the row was made.
        metrics: Metric name → fraction in [0, 1] (keys of ``METRIC_COLUMNS``).
        gold_ranks: Per query, the 1-based rank of the first relevant passage (None: not in the top 100).
        info: Extra facts shown in the report (max_seq_length, truncated passages, encode seconds, ...).
        parent: For a hybrid row, the label of its model row; for a rerank row, the row it re-orders.
    """

    label: str
    kind: RowKind
    source: str
    metrics: dict[str, float]
    gold_ranks: list[int | None] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    parent: str = ""

    def __post_init__(self) -> None:
        self.kind = row_kind(self.kind)


@dataclass
class Report:
    """Everything the report shows about one evaluation run."""

    dataset: str
    n_queries: int
    n_corpus: int
    rows: list[Row]
    relevant_per_query: float = 1.0
    settings: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def reference(self) -> Row:
        """The first row: deltas in the report are against it."""
        return self.rows[0]

    @property
    def main_rows(self) -> list[Row]:
        """The rows measured on the report's own dataset (the main tables and chart); rows of a kind with a section
        of its own are shown there instead."""
        return [r for r in self.rows if r.kind.section is None]

    def of_kind(self, kind: RowKind) -> list[Row]:
        """The rows of ``kind``, in report order."""
        return [r for r in self.rows if r.kind == kind]


# ---------------------------------------------------------------------------------------------------------------
# Comparing two rows question by question


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test: how likely a split at least this uneven is if both sides were equally good."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2**n)


def compare_ranks(a: Row, b: Row) -> tuple[int, int]:
    """(questions where ``a`` ranks the right passage higher than ``b``, questions where lower)."""
    worst = math.inf
    wins = losses = 0
    for rank_a, rank_b in zip(a.gold_ranks, b.gold_ranks, strict=True):
        ra, rb = rank_a or worst, rank_b or worst
        wins += ra < rb
        losses += ra > rb
    return wins, losses


def _p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def comparison(a: Row, b: Row) -> tuple[str, str]:
    """(outcome word: ``better``, ``worse`` or ``no clear difference``; one plain sentence) comparing ``a`` with
    ``b``."""
    wins, losses = compare_ranks(a, b)
    p = sign_test(wins, losses)
    hit_a, hit_b = a.metrics["hit_rate@5"], b.metrics["hit_rate@5"]
    ndcg_a, ndcg_b = a.metrics["ndcg@10"], b.metrics["ndcg@10"]
    facts = (
        f"`{a.label}` puts the right passage in its top 5 for {100 * hit_a:.1f}% of questions against "
        f"{100 * hit_b:.1f}% for `{b.label}` ({100 * (hit_a - hit_b):+.1f} points); ndcg@10 {ndcg_a:.3f} vs "
        f"{ndcg_b:.3f} ({ndcg_a - ndcg_b:+.3f})."
    )
    if wins == losses == 0:
        return "no clear difference", f"{facts} Both rank the right passage the same on every question."
    facts = f"{facts} It ranks the right passage higher on {wins} questions and lower on {losses}"
    if p < SIGNIFICANCE and wins > losses:
        return "better", f"{facts} (sign test {_p_text(p)}: not chance)."
    if p < SIGNIFICANCE and losses > wins:
        return "worse", f"{facts} (sign test {_p_text(p)}: not chance)."
    return "no clear difference", f"{facts} (sign test {_p_text(p)}: could be chance)."


def _best(rows: list[Row]) -> Row | None:
    return max(rows, key=lambda r: r.metrics["ndcg@10"]) if rows else None


# ---------------------------------------------------------------------------------------------------------------
# The kinds evaluate makes, each with its findings (registration order: the verdict's order)


def _models_verdict(report: Report) -> list[str]:
    """Every other model against the first; a hint when there is only one."""
    models = report.of_kind(MODEL)
    if not models:
        return []
    lines = []
    reference = models[0]
    for row in models[1:]:
        outcome, sentence = comparison(row, reference)
        headline = {
            "better": "better than the reference",
            "worse": "worse than the reference",
            "no clear difference": "no clear difference from the reference",
        }[outcome]
        lines.append(f"**`{row.label}` vs `{reference.label}` (first model): {headline}.** {sentence}")
    if len(models) == 1:
        lines.append(
            "Only one model was evaluated: pass the base model first and the fine-tuned one second "
            "(`--model BASE --model FINETUNED`) to see what fine-tuning changed."
        )
    return lines


def _bm25_verdict(report: Report) -> list[str]:
    """The best model against BM25."""
    bm25 = next(iter(report.of_kind(BM25)), None)
    best_model = _best(report.of_kind(MODEL))
    if not (bm25 and best_model):
        return []
    outcome, sentence = comparison(best_model, bm25)
    headline = {
        "better": "beats BM25",
        "worse": "loses to BM25",
        "no clear difference": "is not clearly better than BM25",
    }[outcome]
    return [f"**Best model `{best_model.label}` {headline}.** {sentence}"]


def _hybrid_verdict(report: Report) -> list[str]:
    """The best hybrid against the best single retriever (model or BM25)."""
    best_hybrid = _best(report.of_kind(HYBRID))
    if best_hybrid is None:
        return []
    rivals = [r for r in (_best(report.of_kind(MODEL)), next(iter(report.of_kind(BM25)), None)) if r is not None]
    best_single = max(rivals, key=lambda r: r.metrics["ndcg@10"])
    outcome, sentence = comparison(best_hybrid, best_single)
    headline = {
        "better": f"**Hybrid `{best_hybrid.label}` is the best retriever here:** combining BM25 with the model "
        "in your RAG pipeline is worth it.",
        "worse": f"**Hybrid `{best_hybrid.label}` is worse than `{best_single.label}` alone:** don't mix them.",
        "no clear difference": f"**Hybrid `{best_hybrid.label}` does not clearly beat `{best_single.label}`:** "
        "adding BM25 to the pipeline buys little on this data.",
    }[outcome]
    return [f"{headline} {sentence}"]


def _rerank_verdict(report: Report) -> list[str]:
    """Each reranked row against the row it re-orders."""
    by_label = {r.label: r for r in report.rows}
    lines = []
    for row in (r for r in report.of_kind(RERANK) if r.parent in by_label):
        outcome, sentence = comparison(row, by_label[row.parent])
        role = row.info.get("reranker_role", "")
        headline = {
            "better": "improves the ranking",
            "worse": "makes the ranking worse",
            "no clear difference": "changes little",
        }[outcome]
        latency = f" It costs {row.info['ms_per_query']:.0f} ms per question." if "ms_per_query" in row.info else ""
        lines.append(f"**Second stage `{row.label}` ({role} reranker) {headline}.** {sentence}{latency}")
    return lines


MODEL = register_row_kind(RowKind("model", "embedding model", source_is_path=True, verdict=_models_verdict))
BM25 = register_row_kind(RowKind("bm25", "BM25 (lexical)", color=BM25_COLOR, verdict=_bm25_verdict))
HYBRID = register_row_kind(
    RowKind("hybrid", "hybrid (with BM25)", color="parent", hatch=lambda row: "///", verdict=_hybrid_verdict)
)
RERANK = register_row_kind(
    RowKind(
        "rerank",
        "retriever → reranker",
        color="parent",
        hatch=lambda row: RERANK_HATCHES.get(row.info.get("reranker_role", ""), "xx"),
        verdict=_rerank_verdict,
    )
)


def verdict(report: Report) -> list[str]:
    """Plain-language findings: each kind's, in registration order (did the other models beat the first, does the
    best beat BM25, does hybrid help, does the reranker), then a warning when there are few questions."""
    lines = [line for kind in ROW_KINDS.values() for line in kind.verdict(report)]
    if report.n_queries < 100:
        lines.append(
            f"Only {report.n_queries} questions: differences of a few points can be noise; evaluate on more "
            "questions before deciding."
        )
    return lines
