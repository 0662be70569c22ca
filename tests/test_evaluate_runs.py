"""One evaluate run over several datasets (full corpus, validation chunks only, real questions) loads each model once,
encodes each passage once, and reports the same numbers as evaluating each dataset in a run of its own."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from tiny_encoders import build_tiny_bert, build_tiny_xlmr

from offline_embft.core.config import EvaluateConfig
from offline_embft.core.dataset import QADataset
from offline_embft.evaluate import rankings as eval_rankings
from offline_embft.evaluate import run as evaluate
from offline_embft.evaluate import user_questions
from offline_embft.evaluate.report import METRIC_COLUMNS
from offline_embft.retrieval import fusion
from offline_embft.retrieval.fusion import Fusion

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _st_dir(raw: Path, out: Path) -> Path:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    word = Transformer(str(raw), max_seq_length=48)  # some statute articles are longer: truncation is counted
    SentenceTransformer(modules=[word, Pooling(word.get_embedding_dimension(), "mean"), Normalize()]).save(str(out))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory, laws_dir):
    root = tmp_path_factory.mktemp("runs")
    base = _st_dir(build_tiny_xlmr(root / "xlmr"), root / "base")
    tuned = _st_dir(build_tiny_bert(root / "bert"), root / "finetuned")
    Fusion("score", 0.4).save(tuned)  # as train leaves it: the "+BM25 tuned" row
    # A cross-encoder with its head saved: a raw encoder would get a new random head at every load.
    from sentence_transformers import CrossEncoder

    reranker = root / "reranker"
    CrossEncoder(str(build_tiny_bert(root / "reranker_raw", max_length=512, seed=1)), num_labels=1).save(str(reranker))

    full = QADataset.load(laws_dir / "qa" / "futures_law.json")
    qids = list(full.queries)[:10]
    docs = [d for q in qids for d in full.relevant_docs[q]]
    val = QADataset(
        queries={q: full.queries[q] for q in qids},
        corpus={d: full.corpus[d] for d in docs},
        relevant_docs={q: full.relevant_docs[q] for q in qids},
    ).save(root / "val.json")
    chunk_rows = [
        {"id": d, "text": t, "source": "期货法.pdf", "pages": [1]} for d, t in list(full.corpus.items())[:40]
    ]
    train_chunks = root / "train.jsonl"
    train_chunks.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chunk_rows[10:]), "utf-8")
    val_chunks = root / "val.jsonl"
    val_chunks.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chunk_rows[:10]), "utf-8")
    questions = root / "q.csv"
    with questions.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "passage"])
        for q in list(full.queries)[10:22]:  # about the distractor chunks and the validation ones
            writer.writerow([full.queries[q], full.corpus[full.relevant_docs[q][0]][:24]])
    settings = {
        "models": [str(base), str(tuned)],
        "bm25": True,
        "hybrid": True,
        "base_reranker": str(reranker),
        "rerank_top": 5,
    }
    return {
        "root": root,
        "val": val,
        "settings": settings,
        "distractors": [str(train_chunks)],
        "questions": str(questions),
        "chunks": [str(train_chunks), str(val_chunks)],
    }


def _metrics(out: Path) -> dict[str, dict[str, float]]:
    results = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["results"]
    return {r["model"]: {m: r[m] for m in METRIC_COLUMNS} for r in results}


def test_one_run_loads_each_model_once_and_equals_separate_runs(setup, monkeypatch):
    from offline_embft.retrieval import rerank

    loads: list[str] = []
    real_load, real_ce = eval_rankings.load_model, rerank.load_cross_encoder
    monkeypatch.setattr(eval_rankings, "load_model", lambda path: loads.append(Path(path).name) or real_load(path))
    monkeypatch.setattr(rerank, "load_cross_encoder", lambda path, **kw: loads.append("ce") or real_ce(path, **kw))
    root = setup["root"]
    cfg = EvaluateConfig(
        dataset=str(setup["val"]),
        out_dir=str(root / "together"),
        distractors=setup["distractors"],
        questions=setup["questions"],
        chunks=setup["chunks"],
        **setup["settings"],
    )
    evaluate.run(cfg)
    # Three datasets, two rerankered: each embedding model and the reranker loaded once.
    assert loads == ["base", "finetuned", "ce"]
    together = root / "together"
    headline, small, real = (_metrics(d) for d in (together, together / "small_corpus", together / "real_questions"))
    assert "finetuned+BM25 tuned" in headline and "finetuned → reranker" in headline and "base+BM25" in small
    n_real = json.loads((together / "real_questions" / "metrics.json").read_text(encoding="utf-8"))["queries"]
    crossed = eval_rankings.cross_fit_label("finetuned", min(fusion.CROSS_FIT_FOLDS, n_real))
    assert crossed in real and "finetuned → reranker" in real

    # Each dataset alone, in a run of its own.
    alone = {
        "full": QADataset.load(setup["val"]).with_distractors(setup["distractors"]).save(root / "full.json"),
        "small": setup["val"],
        "real": user_questions.load(setup["questions"], setup["chunks"]).dataset.save(root / "real.json"),
    }
    for name, dataset in alone.items():
        evaluate.run(EvaluateConfig(dataset=str(dataset), out_dir=str(root / name), **setup["settings"]))
    for shared, name in ((headline, "full"), (small, "small"), (real, "real")):
        separate = _metrics(root / name)
        common = set(shared) & set(separate)
        assert len(common) >= 5, name
        assert {label: shared[label] for label in common} == {label: separate[label] for label in common}, name
    assert loads.count("ce") == 4  # the separate runs load it again each time
    # Truncation is counted per dataset from the shared encoding, as a run of its own counts it.
    for directory, name in (
        (together, "full"),
        (together / "small_corpus", "small"),
        (together / "real_questions", "real"),
    ):
        shared_info, separate_info = (
            [
                r["info"]["truncated_passages"]
                for r in json.loads((d / "metrics.json").read_text("utf-8"))["results"]
                if r["kind"] == "model"
            ]
            for d in (directory, root / name)
        )
        assert shared_info == separate_info and all(t is not None for t in shared_info), name
    assert any(shared_info)  # 48 tokens: some articles are cut
