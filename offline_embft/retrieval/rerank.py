"""The second stage: a cross-encoder re-orders the top passages a retriever found.

:func:`load_cross_encoder` loads a local reranker with sentence-transformers' ``CrossEncoder`` (a sentence-transformers
embedding model becomes a cross-encoder with a fresh one-score head, which is how the CPU demo's reranker starts).
:func:`rerank` scores every (question, passage) pair of each question's top ``k`` and re-orders them; passages below
the top ``k`` keep the retriever's order, so a reranked ranking is as deep as the one it re-orders. Pairs already
scored (the fine-tuned model's and the hybrid's top 20 overlap heavily) are not scored again.

A reranker trained by ``train-reranker`` carries ``rerank_fusion.json``: how much of the retriever's own order to keep,
chosen on the validation questions (:func:`offline_embft.retrieval.fusion.tune` over the reranker's order and the
retriever's,
each alone among the candidates). A small reranker trained on a few hundred questions knows things the retriever
does not, but not everything it knows: blending the two orders is never worse than either alone on validation, where
the reranker alone can be far worse than the order it re-sorts.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from offline_embft.core.errors import UserError
from offline_embft.retrieval.fusion import Fusion, fuse
from offline_embft.retrieval.fusion import load as load_fusion

logger = logging.getLogger(__name__)

BLEND_FILE = "rerank_fusion.json"


def check_reranker_dir(path: str | Path) -> Path:
    """Fail early, before any mining or encoding, on a reranker path that cannot be a model."""
    model_dir = Path(path).expanduser()
    if not model_dir.is_dir():
        raise UserError(
            f"reranker directory {model_dir} not found; fix the path, or run `offline-embft download` for the "
            "config's reranker_model (`offline-embft train-reranker` writes a fine-tuned one)"
        )
    if not any((model_dir / name).is_file() for name in ("config.json", "modules.json")):
        raise UserError(f"{model_dir} has neither config.json nor modules.json, so it is not a reranker model")
    return model_dir


def load_cross_encoder(path: str | Path, max_length: int | None = None, device: str | None = None) -> Any:
    """Load a local reranker as a sentence-transformers ``CrossEncoder``.

    Args:
        path: a CrossEncoder directory, a Hugging Face sequence-classification or encoder checkpoint, or a
            sentence-transformers embedding model (its encoder gets a new, untrained one-score head).
        max_length: truncate pairs to this many tokens (None/0: the model's own limit).
        device: torch device (None: GPU when there is one).

    Raises:
        UserError: the directory is missing or does not load.
    """
    model_dir = check_reranker_dir(path)
    from sentence_transformers import CrossEncoder

    try:
        # num_labels=1: one relevance score per pair (the only shape the ranking losses and rerank accept).
        model = CrossEncoder(str(model_dir), num_labels=1, device=device, local_files_only=True)
    except Exception as exc:  # any failure here means "this directory is not a usable reranker"
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"reranker {model_dir} does not load with sentence-transformers CrossEncoder ({reason})"
        ) from None
    if max_length:
        model.max_length = max_length
    return model


@dataclass
class Reranked:
    """A re-ordered ranking: passage positions and scores (reranker scores in the top k, below them lower)."""

    ids: np.ndarray
    scores: np.ndarray
    pairs_scored: int
    seconds: float


class PairScores:
    """Reranker scores of (query index, passage index) pairs, each computed once per model."""

    def __init__(self, model: Any, queries: Sequence[str], passages: Sequence[str], batch_size: int = 32) -> None:
        self.model = model
        self.queries = queries
        self.passages = passages
        self.batch_size = batch_size
        self._scores: dict[tuple[int, int], float] = {}
        self.seconds = 0.0  # time spent in the model, for the per-query latency
        self.computed = 0

    def ms_per_query(self, pairs_per_query: int) -> float:
        """Reranking latency of one question with ``pairs_per_query`` candidates, from the pairs scored so far."""
        return 1000.0 * self.seconds / max(1, self.computed) * pairs_per_query

    def get(self, pairs: list[tuple[int, int]], show_progress: bool = False) -> tuple[np.ndarray, int]:
        """Scores of ``pairs`` (in order) and how many of them had to be computed now."""
        todo = list(dict.fromkeys(pair for pair in pairs if pair not in self._scores))
        if todo:
            started = time.perf_counter()
            texts = [(self.queries[q], self.passages[p]) for q, p in todo]
            # Raw logits (no sigmoid): monotone in relevance, and they keep ties apart where a sigmoid saturates.
            scores = self.model.predict(
                texts,
                batch_size=self.batch_size,
                show_progress_bar=show_progress,
                activation_fn=_identity(),
                convert_to_numpy=True,
            )
            self._scores.update(zip(todo, np.asarray(scores, dtype=np.float64).reshape(-1).tolist(), strict=True))
            self.seconds += time.perf_counter() - started
            self.computed += len(todo)
        return np.array([self._scores[pair] for pair in pairs], dtype=np.float64), len(todo)


def _identity() -> Any:
    import torch

    return torch.nn.Identity()


def load_blend(model_dir: str | Path) -> Fusion | None:
    """The reranker/retriever blend saved by ``train-reranker`` (None: the reranker's order alone)."""
    return load_fusion(model_dir, BLEND_FILE)


def describe_blend(blend: Fusion | None) -> str:
    """The blend in words (the reranker is the first part of the fusion, the retriever's order the second)."""
    if blend is None or blend.method == "model":
        return "the reranker's order alone"
    if blend.method == "bm25":
        return "the retriever's order kept (the reranker did not help on validation)"
    return f"{blend.how()}: reranker weight {blend.weight:g}, retriever weight {1 - blend.weight:g}"


def rerank(
    ids: np.ndarray,
    top: int,
    scorer: PairScores,
    show_progress: bool = False,
    retriever_scores: np.ndarray | None = None,
    blend: Fusion | None = None,
) -> Reranked:
    """Re-order each row's first ``top`` passages by the reranker; the rest of the row keeps its order below them.

    Args:
        ids: (queries, depth) passage positions, best first, from the first-stage retriever.
        top: how many passages of each row the reranker sees.
        scorer: the reranker's pair scores over the same queries and passages.
        retriever_scores: the retriever's scores of ``ids`` (needed by a ``score`` blend).
        blend: how to combine the reranker's order of the top with the retriever's (None: the reranker's alone).

    Returns:
        The new ranking, with scores that decrease along each row (the metric code sorts by score).
    """
    started = time.perf_counter()
    top = min(top, ids.shape[1])
    pairs = [(q, int(p)) for q in range(ids.shape[0]) for p in ids[q, :top]]
    flat, computed = scorer.get(pairs, show_progress)
    head_scores = flat.reshape(ids.shape[0], top)
    # Stable sort on the negated score: equal scores keep the retriever's order.
    order = np.argsort(-head_scores, axis=1, kind="stable")
    head_ids = np.take_along_axis(ids[:, :top], order, axis=1)
    head_scores = np.take_along_axis(head_scores, order, axis=1)
    if blend is not None and blend.method != "model":
        if retriever_scores is None:
            raise ValueError("blending with the retriever's order needs the retriever's scores of ids")
        # Both parts hold the same `top` passages: the blend re-orders them and never reaches below the top.
        head_ids, head_scores = fuse(
            (head_ids, head_scores),
            (ids[:, :top], retriever_scores[:, :top]),
            dataclasses.replace(blend, depth=top),
            len(scorer.passages),
            top,
        )
    new_ids = ids.copy()
    new_scores = np.empty(ids.shape, dtype=np.float64)
    new_ids[:, :top] = head_ids
    new_scores[:, :top] = head_scores
    tail = ids.shape[1] - top
    if tail:
        floor = new_scores[:, top - 1 : top]
        new_scores[:, top:] = floor - np.arange(1, tail + 1, dtype=np.float64)
    return Reranked(new_ids, new_scores, computed, time.perf_counter() - started)
