"""Rankings: the top k of a score matrix, and reciprocal-rank fusion of several rankings.

Used by evaluate (model, BM25 and hybrid rankings), bm25 (search) and negatives (fused candidate lists).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

RRF_K = 60  # the reciprocal-rank-fusion constant of Cormack et al. (2009)


def id_ranks(corpus_ids: Sequence[str]) -> np.ndarray:
    """Each passage's position in ascending corpus-id order: the tie-break :func:`top_k` takes as ``id_rank``."""
    order = sorted(range(len(corpus_ids)), key=corpus_ids.__getitem__)
    ranks = np.empty(len(corpus_ids), dtype=np.int64)
    ranks[order] = np.arange(len(corpus_ids))
    return ranks


def top_k(scores: np.ndarray, k: int, id_rank: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best columns of each row of ``scores``, best first.

    Equal scores are ordered by ``id_rank`` (ascending; default: column order), so a ranking never depends on how
    the sort happened to break a tie — the same rule as sentence-transformers' InformationRetrievalEvaluator.

    Args:
        scores: (rows, columns), e.g. queries × passages.
        k: How many columns to keep per row (clamped to ``columns``).
        id_rank: (columns,) tie-break order of each column (smaller first).

    Returns:
        (indices, scores), both of shape (rows, min(k, columns)).

    Example:
        >>> top_k(np.array([[0.5, 0.9, 0.5]]), 2)
        (array([[1, 0]]), array([[0.9, 0.5]]))
    """
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    rank = np.arange(scores.shape[1]) if id_rank is None else np.asarray(id_rank)
    if k == 0:
        return np.empty((scores.shape[0], 0), dtype=np.int64), np.empty((scores.shape[0], 0), dtype=scores.dtype)
    candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (rows, k), unordered
    threshold = np.take_along_axis(scores, candidates, axis=1).min(axis=1, keepdims=True)  # (rows, 1): k-th score
    # A tie at the k-th score: argpartition picked among the tied columns arbitrarily, so pick again by id.
    for row in np.flatnonzero((scores >= threshold).sum(axis=1) > k):
        above = np.flatnonzero(scores[row] >= threshold[row, 0])
        candidates[row] = above[np.lexsort((rank[above], -scores[row, above]))][:k]
    candidate_scores = np.take_along_axis(scores, candidates, axis=1)  # (rows, k)
    order = np.lexsort((rank[candidates], -candidate_scores), axis=1)  # (rows, k): by score, then by id
    indices = np.take_along_axis(candidates, order, axis=1)  # (rows, k)
    return indices, np.take_along_axis(candidate_scores, order, axis=1)


def reciprocal_rank_fusion(
    rankings: Sequence[np.ndarray],
    n_corpus: int,
    depth: int,
    id_rank: np.ndarray,
    rrf_k: int = RRF_K,
    block_cells: int = 1 << 25,
) -> tuple[np.ndarray, np.ndarray]:
    """Fuse rankings: a passage scores the sum of 1 / (rrf_k + rank) over the rankings that list it.

    Args:
        rankings: Each (queries, depth_i): passage ids, best first, one row per query.
        n_corpus: The number of passages (ids are in [0, n_corpus)).
        depth: How many fused passages to keep per query.
        id_rank: (n_corpus,) tie-break order of the passages.
        rrf_k: The fusion constant (60: Cormack et al.).
        block_cells: Dense (queries × n_corpus) cells fused at once, to bound memory.

    Returns:
        (ids, scores) of the fused top ``depth``, both (queries, min(depth, n_corpus)), ties by ``id_rank``.

    References:
        Cormack, Clarke, Büttcher: Reciprocal Rank Fusion outperforms Condorcet and individual Rank Learning
        Methods (SIGIR 2009).
    """
    n_queries = rankings[0].shape[0]
    rows = max(1, block_cells // max(1, n_corpus))
    ids, scores = [], []
    for start in range(0, n_queries, rows):
        stop = min(n_queries, start + rows)
        fused = np.zeros((stop - start, n_corpus), dtype=np.float64)  # (block queries, n_corpus)
        for ranking in rankings:
            block = ranking[start:stop]  # (block queries, depth_i)
            contribution = 1.0 / (rrf_k + np.arange(1, block.shape[1] + 1, dtype=np.float64))  # (depth_i,)
            # Each passage appears at most once per ranking row, so plain fancy-index += is exact.
            fused[np.arange(stop - start)[:, None], block] += contribution
        block_ids, block_scores = top_k(fused, depth, id_rank)
        ids.append(block_ids)
        scores.append(block_scores)
    return np.concatenate(ids), np.concatenate(scores)


def normalised(scores: np.ndarray) -> np.ndarray:
    """Per-row min-max scaling to [0, 1] (a row of equal scores becomes all 1)."""
    low = scores.min(axis=1, keepdims=True)
    span = scores.max(axis=1, keepdims=True) - low
    return np.where(span > 0, (scores - low) / np.where(span > 0, span, 1.0), 1.0)


def weighted_fusion(
    rankings: Sequence[tuple[np.ndarray, np.ndarray]],
    weights: Sequence[float],
    n_corpus: int,
    depth: int,
    id_rank: np.ndarray | None = None,
    method: str = "score",
    rrf_k: int = RRF_K,
    block_cells: int = 1 << 25,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted fusion of rankings, each ``(ids, scores)`` of shape (queries, depth), best first.

    ``score``: each ranking's scores min-max normalised per query (a passage it does not list gets 0), then summed
    with the weights. ``rank``: weighted reciprocal rank, ``sum(w / (rrf_k + rank))`` (equal weights order passages
    exactly as plain reciprocal-rank fusion does).

    Returns:
        (ids, scores) of the fused top ``depth``, ties by ``id_rank``.
    """
    if method not in ("score", "rank"):
        raise ValueError(f"fusion method must be score or rank, got {method!r}")
    n_queries = rankings[0][0].shape[0]
    rows = max(1, block_cells // max(1, n_corpus))
    out_ids, out_scores = [], []
    for start in range(0, n_queries, rows):
        stop = min(n_queries, start + rows)
        fused = np.zeros((stop - start, n_corpus), dtype=np.float64)
        index = np.arange(stop - start)[:, None]
        for (ids, scores), weight in zip(rankings, weights, strict=True):
            block_ids = ids[start:stop]
            if method == "score":
                contribution = normalised(np.asarray(scores[start:stop], dtype=np.float64))
            else:
                ranks = np.arange(1, block_ids.shape[1] + 1, dtype=np.float64)
                contribution = np.broadcast_to(1.0 / (rrf_k + ranks), block_ids.shape)
            # A passage appears at most once per row of a ranking, so fancy-index += is exact.
            fused[index, block_ids] += weight * contribution
        block_ids, block_scores = top_k(fused, depth, id_rank)
        out_ids.append(block_ids)
        out_scores.append(block_scores)
    return np.concatenate(out_ids), np.concatenate(out_scores)


def fuse_ranked_lists(rankings: list[dict[str, list[str]]], rrf_k: int = RRF_K) -> dict[str, list[str]]:
    """Reciprocal-rank fusion of ragged rankings: the same score as :func:`reciprocal_rank_fusion`, for lists of
    ids of any length per query (negatives' candidates), where a dense matrix would be mostly empty.

    Args:
        rankings: Each maps a query id to its passage ids, best first.
        rrf_k: The fusion constant.

    Returns:
        Query id → every listed passage id, best fused score first (one ranking passes through unchanged).
    """
    if len(rankings) == 1:
        return rankings[0]
    fused: dict[str, list[str]] = {}
    for qid in set().union(*rankings):
        scores: dict[str, float] = defaultdict(float)
        for ranking in rankings:
            for rank, doc in enumerate(ranking.get(qid, [])):
                scores[doc] += 1.0 / (rrf_k + rank + 1)
        fused[qid] = sorted(scores, key=lambda doc: -scores[doc])
    return fused
