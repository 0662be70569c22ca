"""Hard negatives mined from the training corpus: passages that look relevant to a query but are not its answer.

In-batch negatives of a small synthetic dataset are mostly easy (an article on insurance premiums against a question
on company shareholders); a few hard ones per query teach the model the distinctions users actually need. Two
sources, usable alone or fused by reciprocal rank:

- ``model``: the base model's own nearest neighbours, through sentence-transformers' ``mine_hard_negatives`` with
  the NV-Retriever margin (a candidate scoring within 5% of the positive is more likely an unlabelled positive than a
  negative, so it is skipped).
- ``bm25``: jieba-segmented BM25 (bm25s). It is the better source when the base model cannot read the corpus yet
  (all-MiniLM-L6-v2 on Chinese sees mostly [UNK]).

Every candidate is checked against the query's positives: the positives themselves, passages with the same text
under another id, and near-duplicates (character-bigram Jaccard similarity of :data:`NEAR_DUPLICATE` or more, e.g. the
same article repeated in two statutes) are never used as negatives, because teaching the model to push a correct
answer away is worse than teaching it nothing.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from offline_embft.core.config import NEGATIVE_SOURCES
from offline_embft.core.dataset import QADataset
from offline_embft.core.errors import UserError
from offline_embft.retrieval.ranking import fuse_ranked_lists

logger = logging.getLogger(__name__)

SOURCES = NEGATIVE_SOURCES  # the config's choices (train.hard_negative_source, train_reranker.negative_source)
NEAR_DUPLICATE = 0.8  # character-bigram Jaccard at or above which a candidate counts as a copy of a positive
RELATIVE_MARGIN = 0.05  # NV-Retriever TopK-PercPos: skip candidates scoring above 95% of the positive's score
CANDIDATE_FACTOR = 4  # candidates ranked per wanted negative, so that filtering still leaves enough


def mine(
    dataset: QADataset,
    num_negatives: int,
    source: str = "model",
    model: Any = None,
    query_prompt: str = "",
    passage_prompt: str = "",
    seed: int = 42,
) -> list[dict[str, str]]:
    """Rows ``{"anchor", "positive", "negative_1", ..., "negative_N"}``, one per (query, positive) pair.

    Args:
        dataset: the training dataset; its corpus is where negatives come from.
        num_negatives: negatives per row (N).
        source: "model", "bm25" or "both" (see the module docstring).
        model: the SentenceTransformer used for source "model"/"both" (the base model, before training).
        query_prompt: prompt the model expects before queries.
        passage_prompt: prompt the model expects before passages.
        seed: a row whose candidates run out after filtering is topped up with random non-positive passages from
            this seed (logged), so every row has exactly N negatives.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    wanted = num_negatives * CANDIDATE_FACTOR + 5
    candidates = _candidates(dataset, source, wanted, model, query_prompt, passage_prompt)
    rng = random.Random(seed)
    bigrams = {doc: _bigrams(text) for doc, text in dataset.corpus.items()}
    rows: list[dict[str, str]] = []
    topped_up = excluded = 0
    for qid, query in dataset.queries.items():
        positives = dataset.relevant_docs[qid]
        chosen: list[str] = []
        seen_texts = {dataset.corpus[doc] for doc in positives}
        _, skipped = _take(candidates.get(qid, []), chosen, num_negatives, positives, seen_texts, dataset, bigrams)
        excluded += skipped
        if len(chosen) < num_negatives:
            pool = list(dataset.corpus)
            rng.shuffle(pool)
            taken, _ = _take(pool, chosen, num_negatives, positives, seen_texts, dataset, bigrams)
            topped_up += taken
        if len(chosen) < num_negatives:
            raise UserError(
                f"query {qid!r}: the corpus has only {len(chosen)} passages that can serve as negatives, "
                f"fewer than hard_negatives={num_negatives}; lower --hard-negatives"
            )
        for positive in positives:
            row = {"anchor": query, "positive": dataset.corpus[positive]}
            row.update({f"negative_{i}": dataset.corpus[doc] for i, doc in enumerate(chosen, start=1)})
            rows.append(row)
    logger.info(
        "hard negatives (%s): %d per query for %d queries; %d candidates skipped as positives or near-duplicates, "
        "%d slots topped up with random passages",
        source,
        num_negatives,
        len(dataset.queries),
        excluded,
        topped_up,
    )
    return rows


def _candidates(
    dataset: QADataset, source: str, wanted: int, model: Any, query_prompt: str, passage_prompt: str
) -> dict[str, list[str]]:
    """Each query's candidate negatives, best first: BM25's, the model's, or both fused by reciprocal rank."""
    rankings: list[dict[str, list[str]]] = []
    if source in ("bm25", "both"):
        rankings.append(_bm25_candidates(dataset, wanted))
    if source in ("model", "both"):
        if model is None:
            raise ValueError("source 'model' needs a model")
        rankings.append(_model_candidates(dataset, model, wanted, query_prompt, passage_prompt))
    return fuse_ranked_lists(rankings)


def _take(
    docs: Iterable[str],
    chosen: list[str],
    wanted: int,
    positives: list[str],
    seen_texts: set[str],
    dataset: QADataset,
    bigrams: dict[str, set[str]],
) -> tuple[int, int]:
    """Append to ``chosen``, in order, each of ``docs`` that can serve as a negative (not a positive, no text twice,
    not a near-copy of a positive) until it holds ``wanted``; returns (taken, skipped)."""
    taken = skipped = 0
    for doc in docs:
        if len(chosen) == wanted:
            break
        text = dataset.corpus[doc]
        if doc in positives or text in seen_texts or _is_near_duplicate(bigrams[doc], positives, bigrams):
            skipped += 1
            continue
        seen_texts.add(text)
        chosen.append(doc)
        taken += 1
    return taken, skipped


def _model_candidates(
    dataset: QADataset, model: Any, wanted: int, query_prompt: str, passage_prompt: str
) -> dict[str, list[str]]:
    """Per query id, corpus ids ranked by the model, positives and too-close candidates already left out."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    qids = list(dataset.queries)
    first_positive = {qid: dataset.relevant_docs[qid][0] for qid in qids}
    pairs = Dataset.from_dict(
        {
            "anchor": [dataset.queries[qid] for qid in qids],
            "positive": [dataset.corpus[first_positive[qid]] for qid in qids],
        }
    )
    corpus_texts = list(dataset.corpus.values())
    wanted = min(wanted, max(1, len(set(corpus_texts)) - 1))
    mined = mine_hard_negatives(
        pairs,
        model,
        corpus=corpus_texts,
        num_negatives=wanted,
        relative_margin=RELATIVE_MARGIN,
        sampling_strategy="top",
        output_format="labeled-list",
        query_prompt=query_prompt or None,
        corpus_prompt=passage_prompt or None,
        batch_size=64,
        verbose=False,
    )
    # labeled-list rows are [positive, negative_1, ...] in descending score order; map texts back to corpus ids.
    ids_by_text: dict[str, list[str]] = defaultdict(list)
    for doc, text in dataset.corpus.items():
        ids_by_text[text].append(doc)
    qids_by_text: dict[str, list[str]] = defaultdict(list)
    for qid in qids:
        qids_by_text[dataset.queries[qid]].append(qid)
    ranked: dict[str, list[str]] = {}
    for query, docs, labels in zip(mined["anchor"], mined["positive"], mined["labels"], strict=True):
        order = [doc for text, label in zip(docs, labels, strict=True) if label == 0 for doc in ids_by_text[text]]
        for qid in qids_by_text[query]:
            ranked.setdefault(qid, order)
    return ranked


def _bm25_candidates(dataset: QADataset, wanted: int) -> dict[str, list[str]]:
    """Per query id, corpus ids ranked by BM25 over jieba words (positives included; filtered by the caller).

    The same lexical retriever as evaluation's BM25 baseline (:class:`offline_embft.retrieval.bm25.BM25Index`).
    """
    from offline_embft.retrieval.bm25 import BM25Index

    doc_ids = list(dataset.corpus)
    qids = list(dataset.queries)
    index = BM25Index([dataset.corpus[doc] for doc in doc_ids], show_progress=False)
    depth = wanted + max(len(docs) for docs in dataset.relevant_docs.values())
    positions, scores = index.search([dataset.queries[qid] for qid in qids], k=depth)
    ranked: dict[str, list[str]] = {}
    for qid, row, row_scores in zip(qids, positions, scores, strict=True):
        limit = wanted + len(dataset.relevant_docs[qid])
        ranked[qid] = [doc_ids[i] for i, score in zip(row[:limit], row_scores[:limit], strict=True) if score > 0]
    return ranked


def _bigrams(text: str) -> set[str]:
    compact = "".join(text.split())
    return {compact[i : i + 2] for i in range(len(compact) - 1)} or {compact}


def _is_near_duplicate(candidate: set[str], positives: list[str], bigrams: dict[str, set[str]]) -> bool:
    for positive in positives:
        other = bigrams[positive]
        union = len(candidate | other)
        if union and len(candidate & other) / union >= NEAR_DUPLICATE:
            return True
    return False
