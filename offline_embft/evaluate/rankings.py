"""The rankings evaluate compares: each embedding model, BM25, their hybrids, and retriever → reranker.

A ranking is the top passages of every query for one retriever (:class:`Ranking`); the metric code in
:mod:`offline_embft.evaluate.run` treats them all alike. Models are encoded once per corpus; BM25 and the hybrids are
built from the stored rankings without encoding anything again.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from offline_embft.core.config import EvaluateConfig
from offline_embft.core.dataset import QADataset
from offline_embft.core.errors import UserError
from offline_embft.core.model_files import load_sentence_transformer
from offline_embft.evaluate import report as report_mod
from offline_embft.evaluate.report.rows import BM25, HYBRID, MODEL, RERANK, RowKind
from offline_embft.retrieval import fusion
from offline_embft.retrieval.bm25 import BM25Index
from offline_embft.retrieval.ranking import id_ranks, reciprocal_rank_fusion, top_k

logger = logging.getLogger(__name__)

RANK_DEPTH = 100  # map@100 needs the top 100 of every ranking
SCORE_BLOCK = 1 << 25  # query × passage scores held at once (128 MB of float32)


@dataclass
class Ranking:
    """The top passages of every query for one retriever, best first (ties by ascending corpus id)."""

    label: str
    kind: RowKind  # the report row it becomes: MODEL, BM25, HYBRID or RERANK
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
        query_ids = list(dataset.queries)
        return cls(
            query_ids=query_ids,
            queries=[dataset.queries[q] for q in query_ids],
            corpus_ids=corpus_ids,
            passages=[dataset.corpus[c] for c in corpus_ids],
            relevant=[set(dataset.relevant_docs[q]) for q in query_ids],
            id_rank=id_ranks(corpus_ids),
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


def too_long(model, texts: Sequence[str]) -> list[bool] | None:
    """Per text, whether it is longer than the model's max_seq_length (it is silently cut when encoded)."""
    tokenizer = getattr(model, "tokenizer", None)
    limit = getattr(model, "max_seq_length", None)
    if tokenizer is None or not limit:
        return None
    try:
        encoded = tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)
    except Exception as exc:  # an exotic tokenizer: the count is a nicety, not worth failing the run
        logger.debug("could not count truncated passages: %s", exc)
        return None
    return [len(ids) > limit for ids in encoded["input_ids"]]


@dataclass
class Encoded:
    """One model's embeddings of every passage and question a run evaluates: the model loaded once, each passage
    encoded once (the full corpus, the validation chunks and the real questions' chunks overlap), each list of
    questions once (the full and the small corpus share theirs)."""

    path: str
    label: str
    passage_rows: dict[str, int]  # passage text → row of passage_emb
    passage_emb: Any  # tensor (passages, dim) on the model's device
    query_emb: dict[tuple[str, ...], Any]  # a dataset's questions, in order → tensor (questions, dim)
    too_long: set[str]  # passages longer than max_seq_length
    similarity: Callable[[Any, Any], Any]
    info: dict[str, Any]

    def truncated(self, passages: Sequence[str]) -> int | None:
        return None if self.info["truncated_passages"] is None else sum(p in self.too_long for p in passages)


def encode_model(
    path: str,
    label: str,
    passages: Sequence[str],
    question_lists: Sequence[Sequence[str]],
    cfg: EvaluateConfig,
    show_progress: bool,
) -> Encoded:
    """Load one model, encode ``passages`` (each distinct text once, in the given order) and each question list, and
    free the model.

    The first dataset's passages should come first: its encoding is then exactly that of a run on it alone. The
    other datasets' passages reuse those rows; an embedding can differ from a separate encoding in the last bit
    (other texts share its padded batch), never enough to move a metric in the tests.
    """
    import torch
    from sentence_transformers import SimilarityFunction

    model = load_model(path)
    started = time.perf_counter()
    texts = list(dict.fromkeys(passages))
    flags = too_long(model, [cfg.passage_prompt + p for p in texts])
    passage_emb = model.encode_document(
        texts,
        prompt=cfg.passage_prompt or None,
        batch_size=cfg.batch_size,
        show_progress_bar=show_progress,
        convert_to_tensor=True,
    )
    query_emb = {}
    for questions in map(tuple, question_lists):
        if questions not in query_emb:
            query_emb[questions] = model.encode_query(
                list(questions),
                prompt=cfg.query_prompt or None,
                batch_size=cfg.batch_size,
                show_progress_bar=show_progress,
                convert_to_tensor=True,
            )
    info = {
        "device": str(model.device),
        "similarity": str(model.similarity_fn_name),
        "max_seq_length": model.max_seq_length,
        "truncated_passages": None if flags is None else sum(flags),
        "encode_seconds": round(time.perf_counter() - started, 2),
    }
    similarity = SimilarityFunction.to_similarity_fn(model.similarity_fn_name)  # what model.similarity calls
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return Encoded(
        path=str(path),
        label=label,
        passage_rows={text: i for i, text in enumerate(texts)},
        passage_emb=passage_emb,
        query_emb=query_emb,
        too_long={t for t, flag in zip(texts, flags or [], strict=False) if flag},
        similarity=similarity,
        info=info,
    )


def rank_model(encoded: Encoded, data: EvalData) -> Ranking:
    """Rank every passage for every query with one model's stored embeddings (nothing is encoded here)."""
    import torch

    started = time.perf_counter()
    truncated = encoded.truncated(data.passages)
    if truncated:
        logger.warning(
            "%s: %d of %d passages are longer than max_seq_length %s and are cut when encoded",
            encoded.label,
            truncated,
            len(data.passages),
            encoded.info["max_seq_length"],
        )
    rows = [encoded.passage_rows[p] for p in data.passages]
    corpus_emb = encoded.passage_emb[torch.as_tensor(rows, device=encoded.passage_emb.device)]
    query_emb = encoded.query_emb[tuple(data.queries)]
    ids, scores = [], []
    block_rows = max(1, SCORE_BLOCK // max(1, len(data.passages)))
    with torch.inference_mode():
        for start in range(0, len(query_emb), block_rows):
            block = encoded.similarity(query_emb[start : start + block_rows], corpus_emb).float().cpu().numpy()
            block_ids, block_scores = top_k(block, data.depth, data.id_rank)
            ids.append(block_ids)
            scores.append(block_scores)
    info = {
        **encoded.info,
        "truncated_passages": truncated,
        "seconds": round(encoded.info["encode_seconds"] + time.perf_counter() - started, 2),
    }
    return Ranking(encoded.label, MODEL, encoded.path, np.concatenate(ids), np.concatenate(scores), info)


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
    return Ranking(report_mod.BM25_LABEL, BM25, source, np.concatenate(ids), np.concatenate(scores), info)


def rank_hybrid(model: Ranking, bm25: Ranking, data: EvalData, rrf_k: int) -> Ranking:
    """Reciprocal-rank fusion of a model's ranking with BM25's (no encoding: both rankings are already there)."""
    ids, scores = reciprocal_rank_fusion(
        [model.ids, bm25.ids], len(data.passages), data.depth, data.id_rank, rrf_k, SCORE_BLOCK
    )
    source = f"reciprocal-rank fusion (k={rrf_k}) of `{model.label}` and BM25"
    return Ranking(f"{model.label}+BM25", HYBRID, source, ids, scores, parent=model.label)


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
    return Ranking(f"{model.label}+BM25 tuned", HYBRID, source, ids, scores, info, parent=model.label)


def cross_fit_label(model_label: str, n_folds: int) -> str:
    """The label of the fusion row tuned on the user's questions, with the fold count it was graded with: the one
    place that names it (tests look the row up by it)."""
    return f"{model_label}+BM25 tuned on your questions ({n_folds}-fold)"


def rank_cross_fitted(model: Ranking, bm25: Ranking, data: EvalData) -> tuple[Ranking, fusion.Fusion] | None:
    """The fusion tuned on the dataset's own (real) questions, graded honestly: each question ranked with the weight
    chosen on the other folds of them (:func:`fusion.cross_fit`, ``fusion.CROSS_FIT_FOLDS`` folds, or one per
    question when there are fewer). Also returns the choice on all of them.

    None with fewer than 2 questions (no other fold to choose on).
    """
    if len(data.queries) < 2:
        logger.warning("only %d question: no fusion tuned on your questions", len(data.queries))
        return None
    n_folds = min(fusion.CROSS_FIT_FOLDS, len(data.queries))
    position = {cid: i for i, cid in enumerate(data.corpus_ids)}
    relevant = [{position[c] for c in right} for right in data.relevant]
    crossed = fusion.cross_fit(
        (model.ids, model.scores), (bm25.ids, bm25.scores), relevant, len(data.passages), data.id_rank, n_folds
    )
    folds = "; ".join(f"fold {f + 1}: {c.describe()}" for f, c in enumerate(crossed.fold_choices))
    source = (
        f"`{model.label}` with BM25, these questions in {n_folds} folds, each fold ranked with the fusion chosen on "
        f"the rest ({folds})"
    )
    info = {
        "fusion_folds": [{"method": c.method, "model_weight": c.weight} for c in crossed.fold_choices],
        "fusion_on_all": {"method": crossed.overall.method, "model_weight": crossed.overall.weight},
        "model_dir": model.source,
    }
    label = cross_fit_label(model.label, n_folds)
    ranking = Ranking(label, HYBRID, source, crossed.ids, crossed.scores, info, parent=model.label)
    return ranking, crossed.overall


# ---------------------------------------------------------------------------------------------------------------
# Second stage: retriever → reranker


def rank_reranked(
    rankings: Sequence[Ranking],
    data: EvalData,
    cfg: EvaluateConfig,
    show_progress: bool,
    loaded: dict[str, Any] | None = None,
) -> list[Ranking]:
    """Re-order the top ``cfg.rerank_top`` of the best retriever rows (the last model and its hybrid) with the
    fine-tuned reranker and, beside it, the base reranker. ``loaded`` keeps the cross-encoders loaded for the next
    dataset of the run (path → model)."""
    from offline_embft.retrieval.rerank import PairScores, describe_blend, load_blend, load_cross_encoder, rerank

    models = [r for r in rankings if r.kind == MODEL]
    if not models:
        raise UserError("--reranker needs a retriever to re-order; pass --model MODEL_DIR")
    last = models[-1]
    # The model and one hybrid of it: the tuned one where train saved a fusion.json (listed after the RRF one).
    parents = [last, *[r for r in rankings if r.kind == HYBRID and r.parent == last.label][-1:]]
    rerankers = [path for path in (cfg.reranker, cfg.base_reranker) if path]
    labels = report_mod.model_labels(rerankers)
    rows = []
    loaded = {} if loaded is None else loaded
    for path, label in zip(rerankers, labels, strict=True):
        role = "fine-tuned" if path == cfg.reranker else "base"
        if path not in loaded:
            loaded[path] = load_cross_encoder(path)
        scorer = PairScores(loaded[path], data.queries, data.passages, cfg.rerank_batch_size)
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
                    RERANK,
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
