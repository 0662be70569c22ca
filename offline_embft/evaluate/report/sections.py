"""report.md's extra sections: the full corpus beside the validation chunks, and the user's real questions (with the
fusion weight chosen on them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from offline_embft.evaluate.report import Row

if TYPE_CHECKING:
    from offline_embft.evaluate.user_questions import RealQuestions

UNMATCHED_SHOWN = 20


def _cell(rows: list[Row], label: str, metric: str) -> str:
    row = next((r for r in rows if r.label == label), None)
    return f"{row.metrics[metric]:.4f}" if row else "–"


def corpus_section(full_rows: list[Row], small_rows: list[Row], n_full: int, n_small: int, small_dir: str) -> str:
    """report.md: the headline (full-corpus) numbers beside the validation-chunks-only ones."""
    lines = [
        "## Full corpus vs validation chunks only",
        "",
        f"The tables above search every question among all **{n_full}** chunks (the training chunks as distractors), "
        f"as a production index would. Blog recipes search only the **{n_small}** validation chunks "
        f"(`{small_dir}/`): easier, and not what users will see.",
        "",
        "| retriever | ndcg@10 full corpus | ndcg@10 validation chunks | hit_rate@5 full | hit_rate@5 validation |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in full_rows:
        lines.append(
            f"| {row.label} | {row.metrics['ndcg@10']:.4f} | {_cell(small_rows, row.label, 'ndcg@10')} | "
            f"{row.metrics['hit_rate@5']:.4f} | {_cell(small_rows, row.label, 'hit_rate@5')} |"
        )
    return "\n".join(lines)


def real_questions_section(real: RealQuestions, rows: list[Row], real_dir: str, fusion_file: str = "") -> str:
    """report.md: how the retrievers do on the user's own questions, the fusion weight chosen on them (from the row
    whose info has ``fusion_on_all``, saved as ``fusion_file``), and which questions matched no chunk."""
    lines = [
        "## Real questions",
        "",
        f"**{real.total}** real questions; **{real.matched}** matched to chunks and evaluated among all "
        f"{len(real.dataset.corpus)} chunks (`{real_dir}/`); **{len(real.unmatched)}** matched no chunk"
        + (f" (`{real_dir}/unmatched.csv`)." if real.unmatched else "."),
    ]
    if rows:
        lines += ["", "| retriever | hit_rate@5 | accuracy@1 | ndcg@10 | mrr@10 |", "|---|---:|---:|---:|---:|"]
        for row in rows:
            m = row.metrics
            lines.append(
                f"| {row.label} | {m['hit_rate@5']:.4f} | {m['accuracy@1']:.4f} | {m['ndcg@10']:.4f} | "
                f"{m['mrr@10']:.4f} |"
            )
    crossed = next((r for r in rows if "fusion_on_all" in r.info), None)
    if crossed is not None:
        lines += ["", _fusion_on_questions(crossed, real.matched, f"{real_dir}/{fusion_file}")]
    if real.unmatched:
        lines += ["", "Not evaluated (their expected passage matched no chunk):", ""]
        for item in real.unmatched[:UNMATCHED_SHOWN]:
            lines.append(f"- line {item.row}: {item.question} — {item.reason}")
        if len(real.unmatched) > UNMATCHED_SHOWN:
            lines.append(f"- … {len(real.unmatched) - UNMATCHED_SHOWN} more in `{real_dir}/unmatched.csv`")
    return "\n".join(lines)


def _fusion_on_questions(row: Row, n_questions: int, saved: str) -> str:
    """How to adopt the fusion chosen on the real questions (the cross-fitted row says how well it carries over)."""
    choice = row.info["fusion_on_all"]
    method, weight = choice["method"], choice["model_weight"]
    if method in ("model", "bm25"):
        what = f"**{'the model' if method == 'model' else 'BM25'} alone** (no fusion beat it)"
    else:
        what = f"**{method} fusion, model weight {weight:g}, BM25 weight {1 - weight:g}**"
    return (
        f"Fusion with BM25 chosen on all {n_questions} real questions: {what}. `{row.label}` is its honest "
        f"estimate (each question ranked with the weight chosen on the other folds, without it). To use it, copy "
        f"`{saved}` to `{row.info['model_dir']}/fusion.json` (the file train writes; evaluate's `+BM25 tuned` row and "
        "docs/quality.md's RAG snippets read it there)."
    )
