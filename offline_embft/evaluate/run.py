"""Evaluate: base vs fine-tuned vs BM25 (and hybrids) on one EmbeddingQAFinetuneDataset, with a report.

Every ``--model`` is loaded once per run and encodes each distinct passage and each list of questions once, in
batches, even when the run evaluates several datasets (full corpus, validation chunks, real questions: they share
their chunks); the rankings are in :mod:`offline_embft.evaluate.rankings`. Every query is scored against every passage
with the model's own similarity. The top 100 passages per query form that model's ranking. BM25 and the
hybrids (reciprocal-rank fusion of BM25 with each model) are rankings too, built from the stored ones without
encoding anything again. Every ranking goes through the same metric code: sentence-transformers'
``InformationRetrievalEvaluator.compute_metrics`` (so the numbers are exactly what that evaluator reports when run on
the model), plus the hit rate@5 that LlamaIndex's fine-tuning guide computes with a VectorStoreIndex.

With ``cfg.general`` every model is also scored on each general retrieval set (retention: what fine-tuning cost
of the base model's general ability; :mod:`offline_embft.evaluate.report.retention`): ``general/<set>/`` holds each
set's own report, and the headline report shows the rows under their own heading with the delta against the first
model.

Outputs (all written at the end, each atomically): metrics.csv, metrics.json, predictions.jsonl, report.md,
report.png and evaluate_config.yaml in ``cfg.out_dir``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from offline_embft.core import beir
from offline_embft.core.config import EvaluateConfig, save_config
from offline_embft.core.dataset import QADataset
from offline_embft.core.errors import UserError
from offline_embft.core.io import write_text
from offline_embft.core.model_files import check_st_dir
from offline_embft.evaluate import report as report_mod
from offline_embft.evaluate import user_questions
from offline_embft.evaluate.rankings import (
    Encoded,
    EvalData,
    Ranking,
    encode_model,
    rank_bm25,
    rank_cross_fitted,
    rank_hybrid,
    rank_model,
    rank_reranked,
    rank_tuned_hybrid,
)
from offline_embft.evaluate.report import sections as report_sections

logger = logging.getLogger(__name__)

PREDICTION_DEPTH = 10  # top passages per query kept in predictions.jsonl
HIT_RATE_K = 5
SMALL_CORPUS_DIR = "small_corpus"  # beside the full-corpus headline: the dataset's own passages only
REAL_DIR = "real_questions"
REAL_FUSION_FILE = "fusion_on_real_questions.json"  # in REAL_DIR: the fusion chosen on all the real questions
GENERAL_DIR = "general"  # general/<set>/: each general set's own report (retention)


# ---------------------------------------------------------------------------------------------------------------
# Metrics


def ir_evaluator(data: EvalData):
    """sentence-transformers' InformationRetrievalEvaluator over the dataset, used only for its metric code."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    evaluator = InformationRetrievalEvaluator(
        queries=dict(zip(data.query_ids, data.queries, strict=True)),
        corpus=dict(zip(data.corpus_ids, data.passages, strict=True)),
        relevant_docs=dict(zip(data.query_ids, data.relevant, strict=True)),
        write_csv=False,
    )
    if evaluator.queries_ids != data.query_ids:  # it drops queries without relevant docs; the dataset has none
        raise RuntimeError("InformationRetrievalEvaluator reordered or dropped queries")
    return evaluator


def hit_rate(ranking: Ranking, data: EvalData, k: int = HIT_RATE_K) -> float:
    """Share of queries with a relevant passage among the top ``k`` (LlamaIndex's "hit rate")."""
    hits = 0
    for row, relevant in zip(ranking.ids, data.relevant, strict=True):
        hits += any(data.corpus_ids[j] in relevant for j in row[:k])
    return hits / len(data.query_ids)


def compute_metrics(ranking: Ranking, data: EvalData, evaluator) -> dict[str, float]:
    """All metrics of one ranking: the evaluator's accuracy/precision/recall@k, ndcg@10, mrr@10, map@100, and
    hit_rate@5."""
    results = [
        [{"corpus_id": data.corpus_ids[j], "score": float(s)} for j, s in zip(row_ids, row_scores, strict=True)]
        for row_ids, row_scores in zip(ranking.ids, ranking.scores, strict=True)
    ]
    raw = evaluator.compute_metrics(results)
    metrics = {
        f"{name.removesuffix('@k')}@{k}": float(value) for name, values in raw.items() for k, value in values.items()
    }
    metrics[f"hit_rate@{HIT_RATE_K}"] = hit_rate(ranking, data)
    return metrics


def gold_ranks(ranking: Ranking, data: EvalData) -> list[int | None]:
    """Per query, the 1-based rank of the first relevant passage in the ranking (None: not in it)."""
    ranks: list[int | None] = []
    for row, relevant in zip(ranking.ids, data.relevant, strict=True):
        ranks.append(next((i + 1 for i, j in enumerate(row) if data.corpus_ids[j] in relevant), None))
    return ranks


# ---------------------------------------------------------------------------------------------------------------
# Outputs


def predictions_jsonl(rankings: Sequence[Ranking], data: EvalData, ranks: dict[str, list[int | None]]) -> str:
    """predictions.jsonl: per query its text, the right ids and every retriever's top 10 with scores."""
    lines = []
    for q, query_id in enumerate(data.query_ids):
        row = {
            "query_id": query_id,
            "query": data.queries[q],
            "relevant_ids": sorted(data.relevant[q]),
            "results": {
                r.label: {
                    "ids": [data.corpus_ids[j] for j in r.ids[q, :PREDICTION_DEPTH]],
                    "scores": [round(float(s), 6) for s in r.scores[q, :PREDICTION_DEPTH]],
                    "first_relevant_rank": ranks[r.label][q],
                }
                for r in rankings
            },
        }
        lines.append(json.dumps(row, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def _show_progress() -> bool:
    # Progress bars when the user sees INFO messages (the CLI's default), not under --quiet.
    return logging.getLogger("offline_embft").isEnabledFor(logging.INFO)


def run(cfg: EvaluateConfig) -> Path:
    """Evaluate every model of ``cfg`` (plus BM25 and hybrids) and write the results and the report.

    With ``cfg.distractors`` the headline results (``out_dir``) search the dataset's questions among its passages
    AND every distractor chunk, as a production index would; the dataset's own corpus is evaluated beside it
    (``out_dir/small_corpus``). With ``cfg.questions`` the user's real questions are evaluated too
    (``out_dir/real_questions``). report.md gets a section for each.

    Args:
        cfg: The evaluate settings (dataset, models, baselines, rerankers, output directory).

    Returns:
        The path of report.md.

    Raises:
        UserError: a bad dataset, no model given, or a model directory that is missing or does not load.
    """
    dataset, model_dirs = _checked_inputs(cfg)
    real = user_questions.load(cfg.questions, cfg.chunks) if cfg.questions else None  # bad CSV: fail before encoding
    general = [(beir.set_name(path), path, beir.load_set(path)) for path in cfg.general]  # bad set: fail early too
    out_dir = Path(cfg.out_dir)
    full = dataset.with_distractors(cfg.distractors)
    # The headline first: its distinct passages are encoded in its own order, as a run on it alone would.
    jobs = [Evaluation(EvalData.from_dataset(full), out_dir, str(cfg.dataset))]
    if full is not dataset:
        jobs[0].name = f"{cfg.dataset} + {len(full.corpus) - len(dataset.corpus)} distractors"
        # For comparison with the recipes only: no reranker pass (the slow part on a CPU).
        jobs.append(Evaluation(EvalData.from_dataset(dataset), out_dir / SMALL_CORPUS_DIR, str(cfg.dataset), False))
    if real is not None and real.matched:
        jobs.append(Evaluation(EvalData.from_dataset(real.dataset), out_dir / REAL_DIR, cfg.questions, True, True))
    # Retention: every model on each general set too (no reranker: the question is what fine-tuning the embedding
    # model cost). Encoded with the other datasets, after them.
    general_jobs = [
        Evaluation(EvalData.from_dataset(data), out_dir / GENERAL_DIR / name, str(path), rerank=False)
        for name, path, data in general
    ]
    show_progress = _show_progress()
    encoded = [
        encode_model(
            str(path),
            label,
            [p for job in jobs + general_jobs for p in job.data.passages],
            [job.data.queries for job in jobs + general_jobs],
            cfg,
            show_progress,
        )
        for path, label in zip(model_dirs, report_mod.model_labels(cfg.models), strict=True)
    ]
    rerankers: dict[str, Any] = {}  # loaded once, shared by the datasets that are reranked
    for (name, _, _), job in zip(general, general_jobs, strict=True):
        set_rows = report_mod.retention_rows(
            name, evaluate_dataset(cfg, job, encoded, rerankers, show_progress), cfg.retention_margin
        )
        for row in set_rows:
            row.info.update(queries=len(job.data.queries), passages=len(job.data.passages))
        jobs[0].extra_rows += set_rows  # the headline report shows them under their own heading
    rows = [evaluate_dataset(cfg, job, encoded, rerankers, show_progress) for job in jobs]
    sections = []
    if full is not dataset:
        sections.append(
            report_sections.corpus_section(
                [r for r in rows[0] if r.kind.section is None],  # not the retention rows: measured elsewhere
                rows[1],
                len(full.corpus),
                len(dataset.corpus),
                SMALL_CORPUS_DIR,
            )
        )
    if real is not None:
        real_rows = rows[-1] if real.matched else []
        write_text(out_dir / REAL_DIR / "unmatched.csv", user_questions.unmatched_csv(real.unmatched))
        sections.append(report_sections.real_questions_section(real, real_rows, REAL_DIR, REAL_FUSION_FILE))
    if sections:
        report = out_dir / "report.md"
        write_text(report, report.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + "\n\n".join(sections) + "\n")
    save_config(cfg, out_dir / "evaluate_config.yaml")
    return out_dir / "report.md"


def _checked_inputs(cfg: EvaluateConfig) -> tuple[QADataset, list[Path]]:
    """The dataset and the model directories, every input checked before anything loads.

    Raises:
        UserError: no results directory, nothing to evaluate, or a bad dataset, model or reranker directory.
    """
    if not cfg.out_dir:
        raise UserError("no results directory given; pass --out RESULTS_DIR")
    dataset = QADataset.load(cfg.dataset)
    if not cfg.models and not cfg.bm25:
        raise UserError("nothing to evaluate; pass --model MODEL_DIR (repeatable) and/or --bm25")
    model_dirs = [check_st_dir(path, allow_raw=True) for path in cfg.models]
    for path in (cfg.reranker, cfg.base_reranker):
        if path:
            from offline_embft.retrieval.rerank import check_reranker_dir

            check_reranker_dir(path)
    return dataset, model_dirs


@dataclass
class Evaluation:
    """One dataset a run evaluates, and where its results go.

    Attributes:
        data: The dataset's questions and passages.
        out_dir: Its results directory.
        name: The dataset as the report names it.
        rerank: Add the retriever → reranker rows (when the run has rerankers).
        tune_fusion: Also tune the last model's fusion with BM25 on these questions (the user's real ones): a row
            graded by k-fold cross-fitting (``fusion.CROSS_FIT_FOLDS`` folds), and the choice on all of them in
            ``REAL_FUSION_FILE``.
        extra_rows: Rows measured elsewhere that its report shows too (retention's general sets).
    """

    data: EvalData
    out_dir: Path
    name: str
    rerank: bool = True
    tune_fusion: bool = False
    extra_rows: list[report_mod.Row] = field(default_factory=list)


def evaluate_dataset(
    cfg: EvaluateConfig,
    job: Evaluation,
    encoded: Sequence[Encoded],
    rerankers: dict[str, Any],
    show_progress: bool,
) -> list[report_mod.Row]:
    """Rank one dataset with every encoded model, BM25, the hybrids and (with ``job.rerank``) the rerankers; write
    its results into ``job.out_dir``."""
    data = job.data
    logger.info(
        "evaluating %d model(s)%s on %s: %d queries, %d passages",
        len(encoded),
        " + BM25" if cfg.bm25 else "",
        job.name,
        len(data.queries),
        len(data.passages),
    )
    rankings = [rank_model(model, data) for model in encoded]
    if cfg.bm25 or (cfg.hybrid and rankings):
        bm25 = rank_bm25(data, show_progress)
        hybrids = [rank_hybrid(r, bm25, data, cfg.rrf_k) for r in rankings] if cfg.hybrid else []
        if cfg.hybrid:  # the fusion weight chosen on validation by train, where a model has one (fusion.json)
            tuned = (rank_tuned_hybrid(r, bm25, data, Path(r.source)) for r in rankings)
            hybrids += [t for t in tuned if t is not None]
        rankings += ([bm25] if cfg.bm25 else []) + hybrids
    reranked = job.rerank and bool(cfg.reranker or cfg.base_reranker)
    if reranked:
        rankings += rank_reranked(rankings, data, cfg, show_progress, rerankers)
    files: dict[str, str | bytes] = {}
    models = [r for r in rankings if r.kind == report_mod.MODEL]
    if job.tune_fusion and cfg.hybrid and models:  # after the reranker: it re-orders the validation-tuned hybrid
        crossed = rank_cross_fitted(models[-1], bm25, data)
        if crossed is not None:
            last_hybrid = max(i for i, r in enumerate(rankings) if r.kind == report_mod.HYBRID)
            rankings.insert(last_hybrid + 1, crossed[0])
            files[REAL_FUSION_FILE] = json.dumps(asdict(crossed[1]), ensure_ascii=False, indent=2) + "\n"

    evaluator = ir_evaluator(data)
    ranks = {r.label: gold_ranks(r, data) for r in rankings}
    rows = [
        report_mod.Row(
            r.label, r.kind, r.source, compute_metrics(r, data, evaluator), ranks[r.label], r.info, parent=r.parent
        )
        for r in rankings
    ]
    rows += job.extra_rows
    for row in rows:
        logger.info(
            "%-30s hit_rate@5 %.3f  ndcg@10 %.3f  mrr@10 %.3f",
            row.label,
            row.metrics["hit_rate@5"],
            row.metrics["ndcg@10"],
            row.metrics["mrr@10"],
        )
    report = report_mod.Report(
        dataset=job.name,
        n_queries=len(data.queries),
        n_corpus=len(data.passages),
        rows=rows,
        relevant_per_query=float(np.mean([len(r) for r in data.relevant])),
        settings={
            "batch_size": cfg.batch_size,
            "query_prompt": cfg.query_prompt,
            "passage_prompt": cfg.passage_prompt,
            "rrf_k": cfg.rrf_k,
            **({"rerank_top": cfg.rerank_top} if reranked else {}),
        },
    )
    files.update(report_mod.render(report))
    files["predictions.jsonl"] = predictions_jsonl(rankings, data, ranks)
    report_mod.write_files(job.out_dir, files)
    logger.info("wrote %s (and metrics.csv, metrics.json, predictions.jsonl, report.png)", job.out_dir / "report.md")
    return rows


# ---------------------------------------------------------------------------------------------------------------
# The LlamaIndex method, kept to cross-check hit_rate@5 (tests, scripts/bench_evaluate.py)


def llamaindex_hit_rate(dataset: QADataset, model_dir: str | Path, top_k: int = HIT_RATE_K) -> float:
    """Hit rate as LlamaIndex's embedding fine-tuning guide computes it: a VectorStoreIndex over the corpus and one
    retriever call per query, with ``HuggingFaceEmbedding(model_name=model_dir)``.

    Slow by design (one forward pass per query); it exists to show that :func:`run` reports the same number.
    """
    from llama_index.core import Settings, VectorStoreIndex
    from llama_index.core.llms import MockLLM
    from llama_index.core.schema import TextNode
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    embed_model = HuggingFaceEmbedding(model_name=str(model_dir), local_files_only=True)
    Settings.llm = MockLLM()  # nothing here needs an LLM; never let it default to OpenAI
    nodes = [TextNode(id_=doc_id, text=text) for doc_id, text in dataset.corpus.items()]
    index = VectorStoreIndex(nodes, embed_model=embed_model, show_progress=_show_progress())
    retriever = index.as_retriever(similarity_top_k=top_k)
    hits = 0
    for query_id, query in dataset.queries.items():
        retrieved = {node.node.node_id for node in retriever.retrieve(query)}
        hits += bool(retrieved & set(dataset.relevant_docs[query_id]))
    return hits / len(dataset.queries)
