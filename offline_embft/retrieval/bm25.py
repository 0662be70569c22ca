"""BM25 over Chinese text: jieba word segmentation + the bm25s library.

A lexical baseline for ``evaluate`` and a retriever for hard-negative mining in ``train``::

    index = BM25Index(corpus_texts)
    ids, scores = index.search(queries, k=10)   # ids index into corpus_texts, best first

Chinese has no spaces, so text is cut into words with jieba's search mode, which also emits the shorter words inside
long ones (期货交易所 → 期货, 交易, 交易所, 期货交易所): a question that says 交易所 still matches a passage that
says 期货交易所. Latin words and numbers are lower-cased; punctuation and a short list of function words are dropped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from functools import cache

import numpy as np
from tqdm.auto import tqdm

from offline_embft.retrieval.ranking import top_k

logger = logging.getLogger(__name__)

# Function words that occur in nearly every passage and question; BM25's idf already discounts them, dropping them
# just keeps queries like "什么是…的…" from matching everything a little.
_STOPWORD_TEXT = (
    "的 了 是 在 和 与 及 或 等 有 对 为 被 把 将 由 从 向 以 之 其 该 此 这 那 也 都 就 而 并 且 但 即 则 "
    "什么 哪些 怎么 如何 是否 吗 呢 吧 啊 哪 谁 多少 应当 可以 一个 the a an of to and or in on for is are"
)
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD = re.compile(r"\w", re.UNICODE)


@cache
def _jieba():
    import jieba

    # jieba logs "Building prefix dict..." through its own stderr handler, bypassing the application's logging setup.
    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def tokenize(text: str) -> list[str]:
    """Cut text into lower-cased words for BM25 (jieba search mode, no punctuation, no stopwords)."""
    return [
        token
        for token in (t.strip().lower() for t in _jieba().cut_for_search(text))
        if token and _WORD.search(token) and token not in STOPWORDS
    ]


def tokenize_all(texts: Sequence[str], desc: str = "Segmenting", show_progress: bool = True) -> list[list[str]]:
    """:func:`tokenize` every text, with a progress bar."""
    _jieba()
    return [tokenize(text) for text in tqdm(texts, desc=desc, unit="text", disable=not show_progress)]


class BM25Index:
    """A BM25 index of a list of passages.

    Args:
        corpus_texts: The passages; search results are positions in this list.
        k1: BM25 term-frequency saturation.
        b: BM25 length normalisation.
        show_progress: Show progress bars while segmenting and indexing.
    """

    def __init__(self, corpus_texts: Sequence[str], k1: float = 1.5, b: float = 0.75, show_progress: bool = True):
        import bm25s

        # bm25s sets its own logger to DEBUG on import, which floods a normal run.
        logging.getLogger("bm25s").setLevel(logging.WARNING)
        if not corpus_texts:
            raise ValueError("BM25Index needs at least one passage")
        self.size = len(corpus_texts)
        self.show_progress = show_progress
        tokens = tokenize_all(corpus_texts, desc="BM25: segmenting passages", show_progress=show_progress)
        self._retriever = bm25s.BM25(k1=k1, b=b)
        # bm25s wants at least one token per document; an empty passage gets a token no query produces.
        self._retriever.index([t or ["\x00"] for t in tokens], show_progress=False)

    def score_chunks(self, queries: Sequence[str], chunk_size: int = 256) -> Iterator[np.ndarray]:
        """BM25 scores of every passage for each query, as (chunk, corpus) arrays, ``chunk_size`` queries at a time."""
        tokens = tokenize_all(queries, desc="BM25: segmenting queries", show_progress=self.show_progress)
        for start in range(0, len(tokens), chunk_size):
            chunk = tokens[start : start + chunk_size]
            scores = np.zeros((len(chunk), self.size), dtype=np.float32)
            for row, query_tokens in enumerate(chunk):
                ids = self._retriever.get_tokens_ids(query_tokens)
                if ids:  # a query of only unseen words scores 0 everywhere
                    scores[row] = self._retriever.get_scores(ids)
            yield scores

    def search(self, queries: Sequence[str], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best passages for each query.

        Returns:
            (ids, scores): arrays of shape (len(queries), min(k, corpus size)); ids are positions in ``corpus_texts``,
            best first, ties broken by position.
        """
        ids, scores = [], []
        for chunk in self.score_chunks(queries):
            chunk_ids, chunk_scores = top_k(chunk, k)
            ids.append(chunk_ids)
            scores.append(chunk_scores)
        if not ids:
            width = min(k, self.size)
            return np.empty((0, width), dtype=np.int64), np.empty((0, width), dtype=np.float32)
        return np.concatenate(ids), np.concatenate(scores)
