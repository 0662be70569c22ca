"""Retention: evaluate scores base and fine-tuned on general sets (BEIR directory or dataset JSON) and flags a loss
beyond the margin; the merge (train.weight_ensemble) chooses its α to stay within the margin and says the trade-off.

The "fine-tuned" model is a deliberately damaged copy of MiniLM (noise on its weight matrices, seeded): on the
everyday English set (data/general/everyday_en) it measurably loses (ndcg@10 1.000 → ~0.40), and the straight line
between it and MiniLM loses gradually (α 0.6 → ~0.975), which is what the merge has to navigate. Real models only,
on the CPU.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from offline_embft.core import beir
from offline_embft.core.dataset import QADataset

# Everyday English questions with one right passage each, and passages about something else (data/general): a
# "general" set MiniLM (English) answers perfectly, unlike the statutes (Chinese) of the domain.
EVERYDAY = Path(__file__).resolve().parents[1] / "data" / "general" / "everyday_en"
DAMAGE = 0.6  # noise, in units of each weight matrix's own spread


def everyday() -> QADataset:
    return beir.load_set(EVERYDAY)


def damage(model, scale: float = DAMAGE, seed: int = 0):
    """The model with seeded Gaussian noise added to every weight matrix but the embeddings (in place)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2 and "embeddings" not in name:
                parameter.add_(scale * parameter.std() * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("general")
    return {
        "beir": beir.write_beir(everyday(), root / "everyday"),
        "json": everyday().save(root / "everyday_json.json"),
    }


@pytest.fixture(scope="module")
def damaged_dir(tmp_path_factory, minilm_model) -> Path:
    path = tmp_path_factory.mktemp("damaged") / "narrow"
    damage(copy.deepcopy(minilm_model)).save(str(path))
    return path


@pytest.mark.slow
def test_evaluate_shows_retention_rows_and_flags_the_loss(tmp_path, laws_dir, minilm_path, damaged_dir, sets):
    from typer.testing import CliRunner

    from offline_embft.cli import app

    futures = QADataset.load(laws_dir / "qa" / "futures_law.json")
    domain = futures.subset(list(futures.queries)[:8]).save(tmp_path / "domain.json")
    chunks = tmp_path / "chunks.jsonl"  # other articles as distractors: the report's full-corpus section too
    lines = [{"id": i, "text": t, "source": "futures", "pages": [1]} for i, t in list(futures.corpus.items())[8:20]]
    chunks.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    out = tmp_path / "results"
    args = ["evaluate", str(domain), "--model", str(minilm_path), "--model", str(damaged_dir), "--no-bm25"]
    args += ["--distractors", str(chunks)]
    args += ["--general", str(sets["beir"]), "--general", str(sets["json"]), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output

    rows = {row["model"]: row for row in json.loads((out / "metrics.json").read_text(encoding="utf-8"))["results"]}
    base_label = next(label for label in rows if rows[label]["kind"] == "model")
    for name in ("everyday", "everyday_json"):
        base, tuned = rows[f"{base_label} @ {name}"], rows[f"narrow @ {name}"]
        assert base["kind"] == tuned["kind"] == "retention" and tuned["info"]["general_set"] == name
        assert base["ndcg@10"] - tuned["ndcg@10"] > 0.02  # the fixture: fine-tuning measurably lost
        assert (out / "general" / name / "report.md").is_file()
    csv_labels = [line.split(",")[0] for line in (out / "metrics.csv").read_text(encoding="utf-8").splitlines()]
    assert "narrow @ everyday" in csv_labels and "narrow" in csv_labels

    report = (out / "report.md").read_text(encoding="utf-8")
    main_table = report.split("## Main metrics")[1].split("\n\n")[1]
    corpus_table = report.split("## Full corpus vs validation chunks only")[1].split("##")[0]
    assert "@ everyday" not in main_table + corpus_table  # not compared with the domain reference
    section = report.split("## Retention on general sets")[1].split("## How to read this")[0]
    loss = tuned["ndcg@10"] - base["ndcg@10"]
    n = everyday()
    assert f"| everyday_json | `narrow` | {len(n.queries)} | {len(n.corpus)} |" in section
    assert f"{tuned['ndcg@10']:.3f} ({loss:+.3f})" in section
    verdict = report.split("## Main metrics")[0]
    assert re.search(r"Retention: `narrow` lost general ability on `everyday`: ndcg@10 1\.000 → 0\.\d+", verdict)
    assert "more than the margin" in verdict and "train.weight_ensemble: true" in verdict

    from PIL import Image

    with Image.open(out / "report.png") as image, Image.open(out / "general" / "everyday" / "report.png") as plain:
        assert image.height > plain.height  # the retention panel below the main chart


def test_verdict_says_kept_within_the_margin_and_lost_beyond_it():
    from offline_embft.evaluate.report import MODEL, Report, Row, retention_rows, verdict

    def row(label: str, ndcg: float, ranks: list[int]) -> Row:
        return Row(label, MODEL, f"/m/{label}", {"ndcg@10": ndcg, "hit_rate@5": 0.9}, ranks)

    base, kept, lost = row("base", 0.70, [1, 1, 2, 3]), row("ft", 0.69, [1, 1, 2, 4]), row("ft", 0.60, [3, 4, 5, 9])
    domain = Row("base", MODEL, "/m/base", {"ndcg@10": 0.5, "hit_rate@5": 0.5}, [1, 2, 3, 4])
    for tuned, expected in ((kept, "kept its general ability on `T2`"), (lost, "lost general ability on `T2`")):
        rows = retention_rows("T2", [base, tuned], margin=0.02)
        lines = verdict(Report("d.json", 4, 4, [domain, *rows]))
        (line,) = [line for line in lines if "Retention" in line]
        assert expected in line and "margin 0.02" in line
    assert "0.700 → 0.600 (-0.100" in line and "fewer epochs" in line


def test_merge_keeps_the_general_loss_within_the_margin(minilm_model, sets):
    """The domain score here is how close the model is to the fine-tuned weights (so it rises with α, as a real
    domain gain does); the general score is real ndcg@10 on the everyday set. The merge must take the largest α
    whose general loss is within the margin — not α = 1, which the domain score alone would choose."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    from offline_embft.train.ensemble import choose_merge

    data = beir.load_set(sets["beir"])
    evaluator = InformationRetrievalEvaluator(
        data.queries, data.corpus, {q: set(d) for q, d in data.relevant_docs.items()}, name="g", write_csv=False
    )
    tuned = damage(copy.deepcopy(minilm_model))
    texts = list(data.queries.values())[:4]
    target = tuned.encode(texts, convert_to_tensor=True)

    def closeness(model) -> float:
        return -float((model.encode(texts, convert_to_tensor=True) - target).abs().mean())

    def general(model) -> float:
        return evaluator(model)["g_cosine_ndcg@10"]

    alphas = (0.0, 0.4, 0.7, 1.0)
    choice = choose_merge(tuned, minilm_model.state_dict(), closeness, general, margin=0.02, alphas=alphas)
    g = choice.general
    assert g[1.0] < g[0.0] - 0.02  # plain fine-tuning loses more than the margin
    allowed = [a for a in alphas if g[0.0] - g[a] <= 0.02]
    assert choice.alpha == max(allowed) and 0.0 < choice.alpha < 1.0 and choice.within_margin
    assert choice.domain[choice.alpha] > choice.domain[0.0]  # part of the "domain gain" kept
    assert general(tuned) == pytest.approx(g[choice.alpha])  # the model holds the chosen mix
    text = choice.describe()
    assert f"α={choice.alpha:g}" in text and f"general ndcg@10 {g[choice.alpha]:.4f} (base {g[0.0]:.4f}" in text
    saved = choice.to_dict()
    assert saved["within_margin"] and saved["general_ndcg@10_by_alpha"]["1"] == round(g[1.0], 6)


def test_merge_says_when_no_mix_keeps_any_gain():
    from offline_embft.train.ensemble import MergeChoice

    choice = MergeChoice(0.0, {0.0: 0.5, 0.5: 0.6, 1.0: 0.7}, {0.0: 0.8, 0.5: 0.7, 1.0: 0.6}, 0.02)
    assert "no mix kept any of the domain gain within the margin" in choice.describe()
    assert choice.gain_kept == 0.0 and choice.within_margin
    alone = MergeChoice(1.0, {0.0: 0.5, 1.0: 0.7})
    assert "general" not in alone.describe() and set(alone.to_dict()) == {"alpha", "val_ndcg@10_by_alpha"}


def test_general_sets_resolve_from_names_and_paths(tmp_path):
    from offline_embft.core.config import load_config

    own = tmp_path / "own.json"
    sets = [f"general.sets=[T2Retrieval, {own}]", "general.margin=0.05", "dataset_dir=D"]
    cfg = load_config(None, [*sets, "train.weight_ensemble=true"]).resolve()
    assert cfg.evaluate.general == cfg.train.general == [str(Path("D/general/T2Retrieval")), str(own)]
    assert cfg.evaluate.retention_margin == cfg.train.retention_margin == 0.05
    explicit = load_config(None, [*sets, "evaluate.retention_margin=0.01", "train.weight_ensemble=true"]).resolve()
    assert explicit.evaluate.retention_margin == 0.01 and explicit.train.retention_margin == 0.05
    # Without the merge, train does not read them: its settings (and so `all`'s freshness) stay as they were.
    plain = load_config(None, sets).resolve()
    assert plain.train.general == [] and plain.train.retention_margin == 0.02 and plain.evaluate.general
