"""Weighted fusion of an embedding model's ranking with BM25's, the weight chosen on the validation set.

Reciprocal-rank fusion with equal weights (``evaluate``'s RRF hybrid) can be far worse than the better of its parts
when one part is weak: the base MiniLM on Chinese statutes (ndcg@10 0.46) drags BM25 (0.82) down to 0.46+. A weight
chosen on validation data cannot do that there: the candidates include each part alone (weight 1 = the model, 0 =
BM25), so the chosen fusion is at least as good as the better part on the data it was chosen on.

Two ways to fuse, both tried:

* ``score``  each ranking's scores min-max normalised per query over its top ``depth``, then
  ``w * model + (1 - w) * bm25`` (a passage missing from one ranking gets 0 there);
* ``rank``   weighted reciprocal rank: ``w / (k + rank_model) + (1 - w) / (k + rank_bm25)``.

The choice is saved as ``fusion.json`` beside the fine-tuned model; ``evaluate`` adds a tuned hybrid row from it, and
docs/fusion.md shows the same weight in LlamaIndex's ``QueryFusionRetriever`` and LangChain's ``EnsembleRetriever``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from offline_embft.core.io import write_json
from offline_embft.retrieval.bm25 import BM25Index
from offline_embft.retrieval.ranking import RRF_K, id_ranks, top_k, weighted_fusion

logger = logging.getLogger(__name__)

FUSION_FILE = "fusion.json"
METHODS = ("score", "rank")
# train chooses on its validation set among score fusions only. The validation questions come from the documents the
# model was trained on, where it looks stronger than on documents it never saw, and a rank fusion that won there by a
# little lost on the unseen statute: over 19 benchmark models the choice among both methods was at worst -0.013 (small
# corpus) / -0.008 (full corpus) against the better part there, every loss beyond 0.005 a rank fusion; among score
# fusions alone at worst -0.005 / -0.002, and +0.002 / +0.002 better on average (docs/quality.md).
VALIDATION_METHODS = ("score",)
WEIGHTS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 … 0.95; 0 and 1 are the parts alone
MARGIN = 1e-3  # a fusion must beat the better part by more than this (ndcg@10) to be chosen
DEPTH = 100
SCORE_BLOCK = 1 << 25  # query × passage scores held at once
# Cross-fitting folds: each weight is chosen on 80% of the questions, close to the choice on all of them that the
# user adopts; with 2 folds half of 155 questions chose noisy weights (docs/quality.md has the measurement).
CROSS_FIT_FOLDS = 5
# On the user's own questions a fusion must beat the better part by 0.01 to be chosen: over 4 models × 2 corpora × 10
# splits of 155 questions this kept every cross-fitted row within 0.01 of the better part (worst -0.006) and cost the
# models whose fusion helps nothing; with MARGIN two rows were 0.011 and 0.017 below (docs/quality.md). train's choice
# on validation keeps MARGIN: there 0.01 cost one of six models 0.013 on the unseen statute.
CROSS_FIT_MARGIN = 0.01


@dataclass
class Fusion:
    """How to combine a model with BM25.

    Attributes:
        method: ``score`` or ``rank`` (fused), ``model`` or ``bm25`` (one part alone was best on validation).
        weight: The model's share in [0, 1] (BM25 gets ``1 - weight``).
        rrf_k: The rank constant of ``rank`` fusion.
        depth: How many results of each part take part in the fusion.
        chosen_on: Where and how the weight was chosen (dataset, queries, ndcg@10 of the parts and of the choice).
    """

    method: str
    weight: float
    rrf_k: int = RRF_K
    depth: int = DEPTH
    chosen_on: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.method == "model":
            return "the model alone (weight 1: BM25 did not help on the questions it was chosen on)"
        if self.method == "bm25":
            return "BM25 alone (weight 0: the model did not help on the questions it was chosen on)"
        return f"{self.how()}, model weight {self.weight:g}, BM25 weight {1 - self.weight:g}"

    def how(self) -> str:
        """How a fused method combines the two rankings, in words."""
        return "min-max normalised scores" if self.method == "score" else f"weighted reciprocal rank (k={self.rrf_k})"

    def save(self, model_dir: str | Path, name: str = FUSION_FILE) -> Path:
        """Write the choice as ``model_dir/name`` (``fusion.json`` beside a model is what evaluate reads)."""
        return write_json(Path(model_dir) / name, asdict(self))


def load(model_dir: str | Path, name: str = FUSION_FILE) -> Fusion | None:
    """The fusion saved beside a model, or None when there is none (or it is unreadable: then RRF stays)."""
    path = Path(model_dir) / name
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        fusion = Fusion(**data)
    except (ValueError, TypeError) as exc:
        logger.warning("ignoring %s (%s); delete it or re-run train", path, exc)
        return None
    if fusion.method not in (*METHODS, "model", "bm25") or not 0.0 <= fusion.weight <= 1.0:
        logger.warning("ignoring %s: method %r weight %r are not valid", path, fusion.method, fusion.weight)
        return None
    return fusion


def fuse(
    model: tuple[np.ndarray, np.ndarray],
    bm25: tuple[np.ndarray, np.ndarray],
    fusion: Fusion,
    n_corpus: int,
    depth: int,
    id_rank: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Combine two rankings (each ``(ids, scores)`` of shape (queries, depth), best first) as ``fusion`` says.

    Returns:
        (ids, scores) of the fused top ``depth`` per query, ties by ``id_rank``.
    """
    if fusion.method == "model":
        return model[0][:, :depth], model[1][:, :depth]
    if fusion.method == "bm25":
        return bm25[0][:, :depth], bm25[1][:, :depth]
    cut = [(ids[:, : fusion.depth], scores[:, : fusion.depth]) for ids, scores in (model, bm25)]
    return weighted_fusion(
        cut, [fusion.weight, 1.0 - fusion.weight], n_corpus, depth, id_rank, method=fusion.method, rrf_k=fusion.rrf_k
    )


def ndcg_at_10(ids: np.ndarray, relevant: Sequence[set[int]]) -> float:
    """Mean ndcg@10 with binary relevance (the formula of sentence-transformers' InformationRetrievalEvaluator).

    Args:
        ids: (queries, depth) ranked corpus positions.
        relevant: Per query, the corpus positions that are right.
    """
    discounts = 1.0 / np.log2(np.arange(2, 12))
    total = 0.0
    for row, right in zip(ids, relevant, strict=True):
        gains = np.array([1.0 if j in right else 0.0 for j in row[:10]])
        ideal = discounts[: min(len(right), 10)].sum()
        total += float((gains * discounts[: len(gains)]).sum() / ideal) if ideal else 0.0
    return total / max(1, len(relevant))


def tune(
    model: tuple[np.ndarray, np.ndarray],
    bm25: tuple[np.ndarray, np.ndarray],
    relevant: Sequence[set[int]],
    n_corpus: int,
    id_rank: np.ndarray | None = None,
    methods: Sequence[str] = METHODS,
    weights: Sequence[float] = WEIGHTS,
    depth: int = DEPTH,
    rrf_k: int = RRF_K,
    margin: float = MARGIN,
) -> Fusion:
    """The fusion with the best ndcg@10 on this data; never worse than the better part alone.

    Candidates are each part alone and every (method, weight). A fused candidate must beat the better part by more
    than ``margin`` ndcg@10 to be chosen: a tie goes to the simpler retriever.
    """
    depth = min(depth, n_corpus)
    model_score = ndcg_at_10(model[0], relevant)
    bm25_score = ndcg_at_10(bm25[0], relevant)
    if model_score >= bm25_score:
        best, best_score = Fusion("model", 1.0, rrf_k, depth), model_score
    else:
        best, best_score = Fusion("bm25", 0.0, rrf_k, depth), bm25_score
    parts_best = best_score
    candidates: list[dict[str, Any]] = []
    for method in methods:
        for weight in weights:
            candidate = Fusion(method, float(weight), rrf_k, depth)
            score = ndcg_at_10(fuse(model, bm25, candidate, n_corpus, min(depth, 10), id_rank)[0], relevant)
            candidates.append({"method": method, "weight": float(weight), "ndcg@10": round(score, 6)})
            if score > best_score and score > parts_best + margin:
                best, best_score = candidate, score
    best.chosen_on = {
        "queries": len(relevant),
        "model_ndcg@10": round(model_score, 6),
        "bm25_ndcg@10": round(bm25_score, 6),
        "fused_ndcg@10": round(best_score, 6),
        "candidates": candidates,
    }
    logger.debug("fusion chosen on %d labelled queries: %s (ndcg@10 %.4f)", len(relevant), best.describe(), best_score)
    return best


# ---------------------------------------------------------------------------------------------------------------
# Cross-fitting: a weight chosen on the questions it is scored on flatters itself


@dataclass
class CrossFit:
    """Fusion chosen on labelled questions without grading any question with a weight chosen on it.

    Attributes:
        ids: (queries, depth) fused ranking; each query's row comes from the fusion chosen on the OTHER folds.
        scores: The fused scores, same shape.
        folds: Per query, its fold (0 … n_folds - 1).
        fold_choices: ``fold_choices[f]`` was chosen on every fold but ``f`` and ranks the queries of fold ``f``.
        overall: The fusion chosen on all the questions: what to save as ``fusion.json``.
    """

    ids: np.ndarray
    scores: np.ndarray
    folds: np.ndarray
    fold_choices: list[Fusion]
    overall: Fusion


def assign_folds(n_queries: int, n_folds: int = CROSS_FIT_FOLDS, seed: int = 0) -> np.ndarray:
    """Per query its fold: a seeded shuffle dealt round-robin, so fold sizes differ by at most one."""
    if n_queries < n_folds:
        raise ValueError(f"cross-fitting over {n_folds} folds needs at least {n_folds} questions, got {n_queries}")
    folds = np.empty(n_queries, dtype=np.int64)
    folds[np.random.default_rng(seed).permutation(n_queries)] = np.arange(n_queries) % n_folds
    return folds


def cross_fit(
    model: tuple[np.ndarray, np.ndarray],
    bm25: tuple[np.ndarray, np.ndarray],
    relevant: Sequence[set[int]],
    n_corpus: int,
    id_rank: np.ndarray | None = None,
    n_folds: int = CROSS_FIT_FOLDS,
    seed: int = 0,
    depth: int = DEPTH,
    margin: float = CROSS_FIT_MARGIN,
) -> CrossFit:
    """:func:`tune` on all folds but one, applied to that one, for every fold; and :func:`tune` on everything.

    The fused ranking is as wide as ``model``'s. Per fold the choice keeps :func:`tune`'s guarantee (never worse
    than the better part on the questions it was chosen on); on the held-out fold it can be worse, and that is the
    point: it measures how well a weight chosen on some of the user's questions carries over to the others.
    """
    folds = assign_folds(len(relevant), n_folds, seed)
    width = model[0].shape[1]
    ids = np.empty((len(relevant), width), dtype=model[0].dtype)
    scores = np.empty((len(relevant), width), dtype=np.float64)
    choices = []
    for fold in range(n_folds):
        held, chosen_on = folds == fold, folds != fold
        choice = tune(
            (model[0][chosen_on], model[1][chosen_on]),
            (bm25[0][chosen_on], bm25[1][chosen_on]),
            [r for r, keep in zip(relevant, chosen_on, strict=True) if keep],
            n_corpus,
            id_rank,
            depth=depth,
            margin=margin,
        )
        choice.chosen_on["folds_left_out"] = [fold]
        fold_ids, fold_scores = fuse(
            (model[0][held], model[1][held]), (bm25[0][held], bm25[1][held]), choice, n_corpus, width, id_rank
        )
        ids[held], scores[held] = fold_ids, fold_scores
        choices.append(choice)
    overall = tune(model, bm25, relevant, n_corpus, id_rank, depth=depth, margin=margin)
    return CrossFit(ids, scores, folds, choices, overall)


# ---------------------------------------------------------------------------------------------------------------
# Rankings of a small labelled set (the validation set), for train to tune on


@dataclass
class LabelledSet:
    """A QA dataset as parallel lists: what :func:`tune` needs."""

    queries: list[str]
    passages: list[str]
    relevant: list[set[int]]
    id_rank: np.ndarray

    @classmethod
    def from_dataset(cls, dataset: Any) -> LabelledSet:
        corpus_ids = list(dataset.corpus)
        position = {cid: i for i, cid in enumerate(corpus_ids)}
        query_ids = list(dataset.queries)
        return cls(
            queries=[dataset.queries[q] for q in query_ids],
            passages=[dataset.corpus[c] for c in corpus_ids],
            relevant=[{position[c] for c in dataset.relevant_docs[q] if c in position} for q in query_ids],
            id_rank=id_ranks(corpus_ids),
        )


def dense_ranking(model: Any, data: LabelledSet, prompts: tuple[str, str] = ("", ""), depth: int = DEPTH):
    """(ids, scores) of the top ``depth`` passages per query for a SentenceTransformer."""
    import torch

    passages = model.encode_document(
        data.passages, prompt=prompts[1] or None, convert_to_tensor=True, show_progress_bar=False
    )
    queries = model.encode_query(
        data.queries, prompt=prompts[0] or None, convert_to_tensor=True, show_progress_bar=False
    )
    rows = max(1, SCORE_BLOCK // max(1, len(data.passages)))
    ids, scores = [], []
    with torch.inference_mode():
        for start in range(0, len(data.queries), rows):
            block = model.similarity(queries[start : start + rows], passages).float().cpu().numpy()
            block_ids, block_scores = top_k(block, depth, data.id_rank)
            ids.append(block_ids)
            scores.append(block_scores)
    return np.concatenate(ids), np.concatenate(scores)


def bm25_ranking(data: LabelledSet, depth: int = DEPTH):
    """(ids, scores) of the top ``depth`` passages per query for BM25."""
    index = BM25Index(data.passages, show_progress=False)
    ids, scores = [], []
    for block in index.score_chunks(data.queries, chunk_size=max(1, SCORE_BLOCK // len(data.passages))):
        block_ids, block_scores = top_k(block, depth, data.id_rank)
        ids.append(block_ids)
        scores.append(block_scores)
    return np.concatenate(ids), np.concatenate(scores)


def tune_for_model(model: Any, dataset: Any, prompts: tuple[str, str] = ("", "")) -> Fusion:
    """Rank ``dataset`` (the validation set) with the model and with BM25, and tune their fusion on it.

    Only score fusions are candidates besides the parts alone (:data:`VALIDATION_METHODS`).
    """
    data = LabelledSet.from_dataset(dataset)
    depth = min(DEPTH, len(data.passages))
    fusion = tune(
        dense_ranking(model, data, prompts, depth),
        bm25_ranking(data, depth),
        data.relevant,
        len(data.passages),
        data.id_rank,
        methods=VALIDATION_METHODS,
        depth=depth,
    )
    chosen = fusion.chosen_on
    logger.info(
        "fusion chosen on %d labelled queries: %s (ndcg@10 %.4f; model %.4f, BM25 %.4f)",
        chosen["queries"],
        fusion.describe(),
        chosen["fused_ndcg@10"],
        chosen["model_ndcg@10"],
        chosen["bm25_ndcg@10"],
    )
    return fusion
