"""Round-trip filtering of generated questions (Promptagator, InPars): keep a question only when a retriever finds
its own chunk.

An LLM sometimes writes a question its chunk does not answer, or one so generic that a hundred chunks answer it
("本法的目的是什么？"). Trained on as a positive pair, such a question teaches the model noise. The round trip asks a
retriever: among all the chunks of the dataset, does the question's own chunk rank within the top ``k``? Retrievers:

* ``bm25``   jieba + BM25 (:mod:`offline_embft.retrieval.bm25`): cheap, no model; keeps questions sharing words with
the chunk;
* ``model``  the base embedding model (the one about to be fine-tuned);
* ``both``   reciprocal-rank fusion of the two: a question survives when the fused ranking finds its chunk.

Every drop is counted by reason (``not_in_<retriever>_top<k>``) in the generate stats; a chunk left without any
question stays in the corpus as a distractor.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from offline_embft.core.dataset import QADataset
from offline_embft.core.errors import UserError
from offline_embft.retrieval.ranking import RRF_K

logger = logging.getLogger(__name__)

# Query × chunk scores held at once per retriever (64 MB of float32).
SCORE_BLOCK = 1 << 24


def ranks_of_positives(scores: np.ndarray, positives: Sequence[Sequence[int]]) -> np.ndarray:
    """Per query row, the best 1-based rank of any of its positive columns.

    Ties count against the question: a chunk that scores the same as its own is ranked above it, so a question BM25
    cannot match at all (every score 0) ranks last, not first.

    Args:
        scores: (queries, chunks) similarity, higher is better.
        positives: Per query, the columns of its own chunk(s).
    """
    ranks = np.empty(len(positives), dtype=np.int64)
    for row, columns in enumerate(positives):
        if not columns:
            ranks[row] = scores.shape[1] + 1
            continue
        best = scores[row, list(columns)].max()
        ranks[row] = 1 + int((scores[row] >= best).sum()) - int((scores[row, list(columns)] >= best).sum())
    return ranks


def rank_matrix(scores: np.ndarray) -> np.ndarray:
    """1-based rank of every column within its row (ties broken by column order)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, scores.shape[1] + 1)[None, :].repeat(scores.shape[0], 0), axis=1)
    return ranks


def _bm25_blocks(passages: list[str], queries: list[str], rows: int):
    from offline_embft.retrieval.bm25 import BM25Index

    index = BM25Index(passages, show_progress=False)
    start = 0
    for block in index.score_chunks(queries, chunk_size=rows):
        yield start, np.asarray(block, dtype=np.float32)
        start += len(block)


def _model_blocks(model: Any, passages: list[str], queries: list[str], rows: int, prompts: tuple[str, str]):
    import torch

    query_prompt, passage_prompt = prompts
    passage_emb = model.encode_document(
        passages, prompt=passage_prompt or None, convert_to_tensor=True, show_progress_bar=False
    )
    query_emb = model.encode_query(
        queries, prompt=query_prompt or None, convert_to_tensor=True, show_progress_bar=False
    )
    with torch.inference_mode():
        for start in range(0, len(queries), rows):
            yield start, model.similarity(query_emb[start : start + rows], passage_emb).float().cpu().numpy()


def question_ranks(
    dataset: QADataset,
    mode: str,
    model: Any = None,
    prompts: tuple[str, str] = ("", ""),
) -> tuple[list[str], np.ndarray]:
    """The rank of each question's own chunk among all the dataset's chunks, for the ``mode`` retriever.

    Returns:
        (query ids, ranks) in the dataset's query order.
    """
    query_ids = list(dataset.queries)
    corpus_ids = list(dataset.corpus)
    position = {cid: i for i, cid in enumerate(corpus_ids)}
    passages = [dataset.corpus[c] for c in corpus_ids]
    queries = [dataset.queries[q] for q in query_ids]
    positives = [[position[c] for c in dataset.relevant_docs[q] if c in position] for q in query_ids]
    rows = max(1, SCORE_BLOCK // max(1, len(passages)))
    ranks = np.empty(len(queries), dtype=np.int64)
    if mode == "bm25":
        for start, block in _bm25_blocks(passages, queries, rows):
            ranks[start : start + len(block)] = ranks_of_positives(block, positives[start : start + len(block)])
    elif mode == "model":
        for start, block in _model_blocks(model, passages, queries, rows, prompts):
            ranks[start : start + len(block)] = ranks_of_positives(block, positives[start : start + len(block)])
    elif mode == "both":
        lexical = _bm25_blocks(passages, queries, rows)
        dense = _model_blocks(model, passages, queries, rows, prompts)
        for (start, bm25_block), (_, model_block) in zip(lexical, dense, strict=True):
            fused = 1.0 / (RRF_K + rank_matrix(bm25_block)) + 1.0 / (RRF_K + rank_matrix(model_block))
            ranks[start : start + len(fused)] = ranks_of_positives(fused, positives[start : start + len(fused)])
    else:
        raise ValueError(f"unknown round-trip retriever {mode!r}")
    return query_ids, ranks


def load_model(model_dir: str) -> Any:
    """The base embedding model for the round trip, or a one-line UserError."""
    from offline_embft.core.model_files import load_sentence_transformer

    if not model_dir:
        raise UserError(
            "generate.roundtrip needs the base embedding model; set generate.roundtrip_model "
            "(the pipeline uses its converted model), or use generate.roundtrip=bm25"
        )
    return load_sentence_transformer(model_dir)


def filter_dataset(
    dataset: QADataset,
    mode: str,
    k: int,
    model: Any = None,
    prompts: tuple[str, str] = ("", ""),
) -> tuple[QADataset, dict[str, Any]]:
    """Keep the questions whose own chunk ranks within the top ``k`` for the ``mode`` retriever.

    Args:
        dataset: Generated questions and their chunks (every chunk stays in the corpus).
        mode: ``bm25``, ``model`` or ``both`` (``off`` returns the dataset unchanged).
        k: Rank the own chunk must reach (1 = first).
        model: A loaded SentenceTransformer, for ``model`` and ``both``.
        prompts: (query prompt, passage prompt) the model is used with.

    Returns:
        The filtered dataset and its stats: questions checked/kept/dropped, drops by reason, chunks left without a
        question, and how the kept questions' ranks are spread.
    """
    if mode == "off" or not dataset.queries:
        return dataset, {"mode": "off"}
    if mode in ("model", "both") and model is None:
        raise ValueError(f"round-trip mode {mode!r} needs a model")
    started = time.perf_counter()
    query_ids, ranks = question_ranks(dataset, mode, model, prompts)
    reason = f"not_in_{'fused' if mode == 'both' else mode}_top{k}"
    kept = QADataset(corpus=dict(dataset.corpus), mode=dataset.mode)
    dropped: Counter[str] = Counter()
    for query_id, rank in zip(query_ids, ranks, strict=True):
        if rank <= k:
            kept.queries[query_id] = dataset.queries[query_id]
            kept.relevant_docs[query_id] = list(dataset.relevant_docs[query_id])
        else:
            dropped[reason] += 1
    before = {c for docs in dataset.relevant_docs.values() for c in docs}
    after = {c for docs in kept.relevant_docs.values() for c in docs}
    stats = {
        "mode": mode,
        "k": k,
        "questions_checked": len(query_ids),
        "questions_kept": len(kept.queries),
        "dropped": dict(dropped),
        "chunks_left_without_question": len(before - after),
        "rank_1_share": round(float(np.mean(ranks == 1)), 4),
        "median_rank": float(np.median(ranks)),
        "seconds": round(time.perf_counter() - started, 2),
    }
    logger.info(
        "round trip (%s, top %d): kept %d of %d questions; %d chunks left without a question",
        mode,
        k,
        len(kept.queries),
        len(query_ids),
        stats["chunks_left_without_question"],
    )
    return kept, stats


def apply(cfg: Any, dataset: QADataset) -> tuple[QADataset, dict[str, Any]]:
    """The round-trip filter as ``generate`` configures it (``cfg`` is a GenerateConfig)."""
    if cfg.roundtrip == "off":
        return dataset, {"mode": "off"}
    model = load_model(cfg.roundtrip_model) if cfg.roundtrip in ("model", "both") else None
    prompts = (getattr(model, "prompts", {}) or {}) if model is not None else {}
    try:
        return filter_dataset(
            dataset, cfg.roundtrip, cfg.roundtrip_k, model, (prompts.get("query", ""), prompts.get("document", ""))
        )
    finally:
        del model
