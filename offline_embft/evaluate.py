"""Evaluate: base vs fine-tuned vs BM25 (and hybrids) on one EmbeddingQAFinetuneDataset, with a report.

For every ``--model`` the corpus and the queries are each encoded once, in batches, and every query is scored against
every passage with the model's own similarity. The top 100 passages per query form that model's ranking. BM25 and the
hybrids (reciprocal-rank fusion of BM25 with each model) are rankings too, built from the stored ones without
encoding anything again. Every ranking goes through the same metric code: sentence-transformers'
``InformationRetrievalEvaluator.compute_metrics`` (so the numbers are exactly what that evaluator reports when run on
the model), plus the hit rate@5 that LlamaIndex's fine-tuning guide computes with a VectorStoreIndex.

Outputs (all written at the end, each atomically): metrics.csv, metrics.json, predictions.jsonl, report.md,
report.png and evaluate_config.yaml in ``cfg.out_dir``.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from offline_embft import fusion, user_questions
from offline_embft import report as report_mod
from offline_embft.bm25 import BM25Index
from offline_embft.config import EvaluateConfig, save_config
from offline_embft.dataset import QADataset
from offline_embft.errors import UserError
from offline_embft.io import write_text
from offline_embft.model_files import check_st_dir, load_sentence_transformer
from offline_embft.ranking import reciprocal_rank_fusion, top_k

logger = logging.getLogger(__name__)

RANK_DEPTH = 100  # map@100 needs the top 100 of every ranking
PREDICTION_DEPTH = 10  # top passages per query kept in predictions.jsonl
HIT_RATE_K = 5
SCORE_BLOCK = 1 << 25  # query × passage scores held at once (128 MB of float32)
SMALL_CORPUS_DIR = "small_corpus"  # beside the full-corpus headline: the dataset's own passages only
REAL_DIR = "real_questions"
# Directory names that identify nothing on their own; the row label then includes the parent directory.


@dataclass
class Ranking:
    """The top passages of every query for one retriever, best first (ties by ascending corpus id)."""

    label: str
    kind: str  # model, bm25 or hybrid
    source: str
    ids: np.ndarray  # (queries, depth): positions in the corpus list
    scores: np.ndarray  # (queries, depth)
    info: dict[str, Any] = field(default_factory=dict)
    parent: str = ""


@dataclass
class EvalData:
    """A dataset laid out as parallel lists, in the dataset's own order (the order the evaluator encodes in)."""

    query_ids: list[str]
    queries: list[str]
    corpus_ids: list[str]
    passages: list[str]
    relevant: list[set[str]]
    id_rank: np.ndarray  # position of each passage in ascending corpus-id order: the tie-break

    @classmethod
    def from_dataset(cls, dataset: QADataset) -> EvalData:
        corpus_ids = list(dataset.corpus)
        order = sorted(range(len(corpus_ids)), key=corpus_ids.__getitem__)
        id_rank = np.empty(len(corpus_ids), dtype=np.int64)
        id_rank[order] = np.arange(len(corpus_ids))
        query_ids = list(dataset.queries)
        return cls(
            query_ids=query_ids,
            queries=[dataset.queries[q] for q in query_ids],
            corpus_ids=corpus_ids,
            passages=[dataset.corpus[c] for c in corpus_ids],
            relevant=[set(dataset.relevant_docs[q]) for q in query_ids],
            id_rank=id_rank,
        )

    @property
    def depth(self) -> int:
        return min(RANK_DEPTH, len(self.corpus_ids))


# ---------------------------------------------------------------------------------------------------------------
# Models


def load_model(path: str | Path):
    """Load a local model to evaluate (a raw HF checkpoint too, with a warning), or raise a one-line UserError."""
    model = load_sentence_transformer(path, allow_raw=True)
    logger.info("loaded %s on %s (max_seq_length %s)", path, model.device, model.max_seq_length)
    return model


def count_truncated(model, texts: Sequence[str]) -> int | None:
    """How many texts are longer than the model's max_seq_length (they are silently cut when encoded)."""
    tokenizer = getattr(model, "tokenizer", None)
    limit = getattr(model, "max_seq_length", None)
    if tokenizer is None or not limit:
        return None
    try:
        encoded = tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)
    except Exception as exc:  # an exotic tokenizer: the count is a nicety, not worth failing the run
        logger.debug("could not count truncated passages: %s", exc)
        return None
    return sum(len(ids) > limit for ids in encoded["input_ids"])


def score_blocks(query_emb, corpus_emb, similarity, n_corpus: int):
    """Yield (start, scores) blocks of the query × passage similarity as float32 numpy arrays."""
    rows = max(1, SCORE_BLOCK // max(1, n_corpus))
    for start in range(0, len(query_emb), rows):
        block = similarity(query_emb[start : start + rows], corpus_emb)
        yield start, block.float().cpu().numpy()


def rank_model(path: str, label: str, data: EvalData, cfg: EvaluateConfig, show_progress: bool) -> Ranking:
    """Encode the corpus and the queries once with one model and rank every passage for every query."""
    import torch

    model = load_model(path)
    started = time.perf_counter()
    truncated = count_truncated(model, [cfg.passage_prompt + p for p in data.passages])
    if truncated:
        logger.warning(
            "%s: %d of %d passages are longer than max_seq_length %s and are cut when encoded",
            label,
            truncated,
            len(data.passages),
            model.max_seq_length,
        )
    corpus_emb = model.encode_document(
        data.passages,
        prompt=cfg.passage_prompt or None,
        batch_size=cfg.batch_size,
        show_progress_bar=show_progress,
        convert_to_tensor=True,
    )
    query_emb = model.encode_query(
        data.queries,
        prompt=cfg.query_prompt or None,
        batch_size=cfg.batch_size,
        show_progress_bar=show_progress,
        convert_to_tensor=True,
    )
    encode_seconds = time.perf_counter() - started
    ids, scores = [], []
    with torch.inference_mode():
        for _, block in score_blocks(query_emb, corpus_emb, model.similarity, len(data.passages)):
            block_ids, block_scores = top_k(block, data.depth, data.id_rank)
            ids.append(block_ids)
            scores.append(block_scores)
    info = {
        "device": str(model.device),
        "similarity": str(model.similarity_fn_name),
        "max_seq_length": model.max_seq_length,
        "truncated_passages": truncated,
        "encode_seconds": round(encode_seconds, 2),
        "seconds": round(time.perf_counter() - started, 2),
    }
    del model, corpus_emb, query_emb
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return Ranking(label, "model", str(path), np.concatenate(ids), np.concatenate(scores), info)


# ---------------------------------------------------------------------------------------------------------------
# BM25 and hybrid


def rank_bm25(data: EvalData, show_progress: bool) -> Ranking:
    """Rank every passage for every query with BM25 over jieba-segmented text."""
    started = time.perf_counter()
    index = BM25Index(data.passages, show_progress=show_progress)
    ids, scores = [], []
    for block in index.score_chunks(data.queries, chunk_size=max(1, SCORE_BLOCK // len(data.passages))):
        block_ids, block_scores = top_k(block, data.depth, data.id_rank)
        ids.append(block_ids)
        scores.append(block_scores)
    info = {"seconds": round(time.perf_counter() - started, 2)}
    source = "BM25 (jieba search-mode words, bm25s k1=1.5 b=0.75)"
    return Ranking(report_mod.BM25_LABEL, "bm25", source, np.concatenate(ids), np.concatenate(scores), info)


def rank_hybrid(model: Ranking, bm25: Ranking, data: EvalData, rrf_k: int) -> Ranking:
    """Reciprocal-rank fusion of a model's ranking with BM25's (no encoding: both rankings are already there)."""
    ids, scores = reciprocal_rank_fusion(
        [model.ids, bm25.ids], len(data.passages), data.depth, data.id_rank, rrf_k, SCORE_BLOCK
    )
    source = f"reciprocal-rank fusion (k={rrf_k}) of `{model.label}` and BM25"
    return Ranking(f"{model.label}+BM25", "hybrid", source, ids, scores, parent=model.label)


def rank_tuned_hybrid(model: Ranking, bm25: Ranking, data: EvalData, model_dir: Path) -> Ranking | None:
    """The fusion saved beside the model by train (weight chosen on validation); None when it has none."""
    choice = fusion.load(model_dir)
    if choice is None:
        return None
    ids, scores = fusion.fuse(
        (model.ids, model.scores), (bm25.ids, bm25.scores), choice, len(data.passages), data.depth, data.id_rank
    )
    source = f"`{model.label}` with BM25, tuned on validation ({fusion.FUSION_FILE}): {choice.describe()}"
    info = {"fusion": choice.method, "model_weight": choice.weight}
    return Ranking(f"{model.label}+BM25 tuned", "hybrid", source, ids, scores, info, parent=model.label)


# ---------------------------------------------------------------------------------------------------------------
# Second stage: retriever → reranker


def rank_reranked(
    rankings: Sequence[Ranking], data: EvalData, cfg: EvaluateConfig, show_progress: bool
) -> list[Ranking]:
    """Re-order the top ``cfg.rerank_top`` of the best retriever rows (the last model and its hybrid) with the
    fine-tuned reranker and, beside it, the base reranker."""
    from offline_embft.rerank import PairScores, describe_blend, load_blend, load_cross_encoder, rerank

    models = [r for r in rankings if r.kind == "model"]
    if not models:
        raise UserError("--reranker needs a retriever to re-order; pass --model MODEL_DIR")
    last = models[-1]
    # The model and one hybrid of it: the tuned one where train saved a fusion.json (listed after the RRF one).
    parents = [last, *[r for r in rankings if r.kind == "hybrid" and r.parent == last.label][-1:]]
    rerankers = [path for path in (cfg.reranker, cfg.base_reranker) if path]
    labels = report_mod.model_labels(rerankers)
    rows = []
    for path, label in zip(rerankers, labels, strict=True):
        role = "fine-tuned" if path == cfg.reranker else "base"
        scorer = PairScores(load_cross_encoder(path), data.queries, data.passages, cfg.rerank_batch_size)
        blend = load_blend(path)
        for parent in parents:
            result = rerank(parent.ids, cfg.rerank_top, scorer, show_progress, parent.scores, blend)
            top = min(cfg.rerank_top, parent.ids.shape[1])
            info = {
                "reranker": str(path),
                "reranker_role": role,
                "blend": describe_blend(blend),
                "rerank_top": top,
                "pairs_scored": result.pairs_scored,
                "seconds": round(result.seconds, 2),
            }
            rows.append(
                Ranking(
                    f"{parent.label} → {label}",
                    "rerank",
                    f"`{path}` re-orders the top {top} of `{parent.label}`",
                    result.ids,
                    result.scores,
                    info,
                    parent=parent.label,
                )
            )
        # Latency from every pair this reranker scored (the hybrid's top overlaps the model's: scored once).
        for row in rows[-len(parents) :]:
            row.info["ms_per_query"] = round(scorer.ms_per_query(row.info["rerank_top"]), 1)
        logger.info("%s: %.1f ms per question to rerank the top %d", label, scorer.ms_per_query(top), top)
        del scorer
        gc.collect()
    return rows


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
    if not cfg.out_dir:
        raise UserError("no results directory given; pass --out RESULTS_DIR")
    dataset = QADataset.load(cfg.dataset)
    if not cfg.models and not cfg.bm25:
        raise UserError("nothing to evaluate; pass --model MODEL_DIR (repeatable) and/or --bm25")
    for path in cfg.models:
        check_st_dir(path, allow_raw=True)
    real = user_questions.load(cfg.questions, cfg.chunks) if cfg.questions else None  # bad CSV: fail before encoding
    out_dir = Path(cfg.out_dir)
    full = dataset.with_distractors(cfg.distractors)
    sections = []
    if full is not dataset:
        rows = evaluate_dataset(
            cfg, full, out_dir, f"{cfg.dataset} + {len(full.corpus) - len(dataset.corpus)} distractors"
        )
        # For comparison with the recipes only: no reranker pass (the slow part on a CPU).
        small_rows = evaluate_dataset(cfg, dataset, out_dir / SMALL_CORPUS_DIR, str(cfg.dataset), rerank=False)
        sections.append(
            report_mod.corpus_section(rows, small_rows, len(full.corpus), len(dataset.corpus), SMALL_CORPUS_DIR)
        )
    else:
        evaluate_dataset(cfg, dataset, out_dir, str(cfg.dataset))
    if real is not None:
        real_rows = evaluate_dataset(cfg, real.dataset, out_dir / REAL_DIR, cfg.questions) if real.matched else []
        write_text(out_dir / REAL_DIR / "unmatched.csv", user_questions.unmatched_csv(real.unmatched))
        sections.append(report_mod.real_questions_section(real, real_rows, REAL_DIR))
    if sections:
        report = out_dir / "report.md"
        write_text(report, report.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + "\n\n".join(sections) + "\n")
    save_config(cfg, out_dir / "evaluate_config.yaml")
    return out_dir / "report.md"


def evaluate_dataset(
    cfg: EvaluateConfig, dataset: QADataset, out_dir: Path, name: str, rerank: bool = True
) -> list[report_mod.Row]:
    """Evaluate the models of ``cfg`` (plus BM25, hybrids and, with ``rerank``, the rerankers) on one dataset; write
    its results into ``out_dir``."""
    model_dirs = [check_st_dir(path, allow_raw=True) for path in cfg.models]
    for path in (cfg.reranker, cfg.base_reranker):
        if path:
            from offline_embft.rerank import check_reranker_dir

            check_reranker_dir(path)
    labels = report_mod.model_labels(cfg.models)
    data = EvalData.from_dataset(dataset)
    show_progress = _show_progress()
    logger.info(
        "evaluating %d model(s)%s on %s: %d queries, %d passages",
        len(model_dirs),
        " + BM25" if cfg.bm25 else "",
        name,
        len(data.queries),
        len(data.passages),
    )

    rankings = [
        rank_model(str(path), label, data, cfg, show_progress) for path, label in zip(model_dirs, labels, strict=True)
    ]
    if cfg.bm25 or (cfg.hybrid and rankings):
        bm25 = rank_bm25(data, show_progress)
        hybrids = [rank_hybrid(r, bm25, data, cfg.rrf_k) for r in rankings] if cfg.hybrid else []
        if cfg.hybrid:  # the fusion weight chosen on validation by train, where a model has one (fusion.json)
            tuned = (rank_tuned_hybrid(r, bm25, data, path) for r, path in zip(rankings, model_dirs, strict=True))
            hybrids += [t for t in tuned if t is not None]
        rankings += ([bm25] if cfg.bm25 else []) + hybrids
    if rerank and (cfg.reranker or cfg.base_reranker):
        rankings += rank_reranked(rankings, data, cfg, show_progress)

    evaluator = ir_evaluator(data)
    ranks = {r.label: gold_ranks(r, data) for r in rankings}
    rows = [
        report_mod.Row(
            r.label, r.kind, r.source, compute_metrics(r, data, evaluator), ranks[r.label], r.info, parent=r.parent
        )
        for r in rankings
    ]
    for row in rows:
        logger.info(
            "%-30s hit_rate@5 %.3f  ndcg@10 %.3f  mrr@10 %.3f",
            row.label,
            row.metrics["hit_rate@5"],
            row.metrics["ndcg@10"],
            row.metrics["mrr@10"],
        )
    report = report_mod.Report(
        dataset=name,
        n_queries=len(data.queries),
        n_corpus=len(data.passages),
        rows=rows,
        relevant_per_query=float(np.mean([len(r) for r in data.relevant])),
        settings={
            "batch_size": cfg.batch_size,
            "query_prompt": cfg.query_prompt,
            "passage_prompt": cfg.passage_prompt,
            "rrf_k": cfg.rrf_k,
            **({"rerank_top": cfg.rerank_top} if rerank and (cfg.reranker or cfg.base_reranker) else {}),
        },
    )
    files = report_mod.render(report)
    files["predictions.jsonl"] = predictions_jsonl(rankings, data, ranks)
    report_mod.write_files(out_dir, files)
    logger.info("wrote %s (and metrics.csv, metrics.json, predictions.jsonl, report.png)", out_dir / "report.md")
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
