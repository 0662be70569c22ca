"""report.png: grouped bars of the main metrics, one bar per row of the report.

Chinese labels (model directories, dataset names) are drawn with a CJK font: the subset of Noto Sans CJK SC shipped
in ``offline_embft/fonts`` (made by scripts/make_cjk_font.py), else one installed on the system. A label with a
character no font covers is replaced by an ASCII name rather than drawn as empty boxes.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from offline_embft.evaluate.report.rows import BM25_COLOR, ROW_KINDS, Report

logger = logging.getLogger(__name__)

MAIN_HELP = {  # second line of the chart's x labels: short, they sit side by side
    "hit_rate@5": "answer in top 5",
    "accuracy@1": "answer ranked 1st",
    "recall@10": "answers in top 10",
    "mrr@10": "1 / rank of answer",
    "ndcg@10": "rank-weighted",
    "map@100": "avg. precision",
}

FONT_DIR = Path(__file__).resolve().parent / "fonts"
BUNDLED_CJK_FONT = FONT_DIR / "NotoSansCJKsc-subset.otf"
# Full CJK fonts found on Linux/Windows/macOS, tried after the bundled subset when a label needs a rarer character.
SYSTEM_CJK_FAMILIES = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "Source Han Sans CN",
    "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei",
    "Microsoft YaHei",
    "SimHei",
    "PingFang SC",
    "Heiti SC",
    "Sarasa Gothic SC",
    "AR PL UKai CN",
    "AR PL UMing CN",
)
BASE_FONT = "DejaVu Sans"
PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#CCB974", "#64B5CD")


@cache
def _charmap(path: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    return frozenset(FT2Font(path).get_charmap())


def _cjk_font_paths() -> list[Path]:
    """The bundled CJK subset first, then full CJK fonts installed on this machine."""
    from matplotlib import font_manager

    paths = [BUNDLED_CJK_FONT] if BUNDLED_CJK_FONT.is_file() else []
    wanted = {name.lower() for name in SYSTEM_CJK_FAMILIES}
    paths += sorted({Path(f.fname) for f in font_manager.fontManager.ttflist if f.name.lower() in wanted})
    return paths


def pick_fonts(texts: list[str]) -> list[str] | None:
    """Font families (for ``font.family``) that together have a glyph for every character of ``texts``.

    Latin text is drawn with DejaVu Sans, everything else with the first CJK font that covers all the rest.

    Returns:
        The family list, or None when no available font covers some character (the caller then uses ASCII labels).
    """
    from matplotlib import font_manager

    needed = {ord(c) for text in texts for c in text if not c.isspace()}
    base = font_manager.findfont(BASE_FONT, fallback_to_default=True)
    missing = needed - _charmap(base)
    if not missing:
        return [BASE_FONT]
    for path in _cjk_font_paths():
        try:
            if missing <= _charmap(str(path)):
                font_manager.fontManager.addfont(str(path))
                return [BASE_FONT, font_manager.FontProperties(fname=str(path)).get_name()]
        except (OSError, RuntimeError) as exc:  # an unreadable font file: try the next one
            logger.debug("font %s unusable: %s", path, exc)
    return None


def _ascii(text: str, fallback: str) -> str:
    return text if text.isascii() else fallback


def chart_labels(report: Report) -> tuple[list[str], str, list[str] | None]:
    """(row labels, title, font families) for the chart; ASCII stand-ins when no font covers every character."""
    labels = [row.label for row in report.rows]
    title = f"{Path(report.dataset).name}: {report.n_queries} questions, {report.n_corpus} passages"
    fonts = pick_fonts([*labels, title])
    if fonts is None:
        logger.warning("no installed font can draw every character of the labels; the chart uses ASCII names")
        labels = [_ascii(label, f"model-{i + 1}") for i, label in enumerate(labels)]
        title = _ascii(title, f"{report.n_queries} questions, {report.n_corpus} passages")
    return labels, title, fonts


def _colors(report: Report) -> list[tuple[str, str]]:
    """(colour, hatch) per row, as its kind says: one colour per model, grey for BM25, the model's colour hatched
    for its hybrid and cross-hatched (fine-tuned reranker) or dotted (base reranker) for the rows that rerank them."""
    own = [r for r in report.rows if r.kind.color == "own"]
    by_label = {row.label: PALETTE[i % len(PALETTE)] for i, row in enumerate(own)}
    styles = []
    for row in report.rows:
        color = row.kind.color
        if color == "parent":  # a row drawn in its parent's colour passes it on to the rows made from it
            color = by_label.setdefault(row.label, by_label.get(row.parent, BM25_COLOR))
        elif color == "own":
            color = by_label[row.label]
        styles.append((color, row.kind.hatch(row)))
    return styles


def chart_png(report: Report, metrics: Sequence[str], dpi: int = 150) -> bytes:
    """report.png: grouped bars of ``metrics`` (keys of :data:`MAIN_HELP`), one bar per row, values on the bars."""
    import matplotlib
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Rows measured on other datasets (retention's general sets) get a panel of their own below the main one.
    panels = [(kind, report.of_kind(kind)) for kind in ROW_KINDS.values() if kind.panel and report.of_kind(kind)]
    report = dataclasses.replace(report, rows=report.main_rows)
    labels, title, fonts = chart_labels(report)
    n_rows, n_metrics = len(report.rows), len(metrics)
    width = 0.84 / n_rows
    x = np.arange(n_metrics)
    with matplotlib.rc_context({"font.family": fonts or [BASE_FONT], "hatch.linewidth": 0.8}):
        width_in = max(10.0, 1.7 * n_metrics + 0.35 * n_rows * n_metrics / 2)
        fig = Figure(figsize=(width_in, 5.8 + 4.2 * len(panels)), dpi=dpi)
        FigureCanvasAgg(fig)
        grid = fig.add_gridspec(1 + len(panels), 1, height_ratios=[5.8] + [4.2] * len(panels))
        ax = fig.add_subplot(grid[0])
        for i, (row, label, (color, hatch)) in enumerate(zip(report.rows, labels, _colors(report), strict=True)):
            values = [row.metrics[m] for m in metrics]
            bars = ax.bar(
                x + (i - (n_rows - 1) / 2) * width,
                values,
                width * 0.92,
                label=label,
                color=color,
                hatch=hatch,
                edgecolor="white" if hatch else color,
                linewidth=0.0 if not hatch else 0.6,
                alpha=0.75 if hatch else 1.0,
            )
            ax.bar_label(bars, fmt="%.2f", fontsize=8 if n_rows <= 3 else 7 if n_rows <= 5 else 6, padding=2)
        ax.set_xticks(x, [f"{m}\n{MAIN_HELP[m]}" for m in metrics], fontsize=9)
        ax.set_ylim(0, 1.1)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_ylabel("score (0 to 1, higher is better)")
        ax.set_title(title, fontsize=12, pad=12)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, title="model", alignment="left")
        for i, (kind, rows) in enumerate(panels):
            kind.panel(fig.add_subplot(grid[1 + i]), rows)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()
