"""rerank(): the reranker re-orders a retriever's top k, alone or blended with the retriever's own order."""

from __future__ import annotations

import numpy as np
import pytest

from offline_embft.retrieval.fusion import Fusion
from offline_embft.retrieval.rerank import PairScores, describe_blend, rerank


class _ScoreByPassage:
    """A reranker whose score of (query, passage) is a fixed number per passage (predict's interface)."""

    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores
        self.calls = 0

    def predict(self, pairs, **kwargs):
        self.calls += 1
        return np.array([self.scores[passage] for _, passage in pairs])


PASSAGES = ["p0", "p1", "p2", "p3", "p4"]
# The retriever's order for one question: p0 p1 p2 p3 p4; the reranker prefers p3 > p2 > p1 > p0 (and sees the top 4).
IDS = np.array([[0, 1, 2, 3, 4]])
RETRIEVER_SCORES = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
RERANKER = {"p0": 0.0, "p1": 1.0, "p2": 2.0, "p3": 3.0, "p4": 9.0}


def _scorer() -> PairScores:
    return PairScores(_ScoreByPassage(RERANKER), ["q"], PASSAGES)


def test_the_reranker_alone_reorders_only_the_top():
    result = rerank(IDS, 4, _scorer())
    assert result.ids.tolist() == [[3, 2, 1, 0, 4]]  # p4 is below the top 4: it stays last despite its score
    assert (np.diff(result.scores[0]) < 0).all()
    same = rerank(IDS, 4, _scorer(), retriever_scores=RETRIEVER_SCORES, blend=Fusion("model", 1.0))
    assert same.ids.tolist() == result.ids.tolist()


def test_a_retriever_only_blend_keeps_the_retriever_order():
    result = rerank(IDS, 4, _scorer(), retriever_scores=RETRIEVER_SCORES, blend=Fusion("bm25", 0.0))
    assert result.ids.tolist() == IDS.tolist()
    assert "retriever's order kept" in describe_blend(Fusion("bm25", 0.0))


@pytest.mark.parametrize(
    ("blend", "expected"),
    [
        # min-max: reranker (0, 1/3, 2/3, 1) for p0..p3, retriever (1, 2/3, 1/3, 0): 0.7/0.3 favours the reranker
        (Fusion("score", 0.7), [3, 2, 1, 0, 4]),
        (Fusion("score", 0.3), [0, 1, 2, 3, 4]),
        # rank: the reranker ranks p3 first, the retriever p0 first; weight 0.9 goes with the reranker
        (Fusion("rank", 0.9, rrf_k=1), [3, 2, 1, 0, 4]),
        (Fusion("rank", 0.1, rrf_k=1), [0, 1, 2, 3, 4]),
    ],
)
def test_a_blend_weights_the_two_orders(blend, expected):
    result = rerank(IDS, 4, _scorer(), retriever_scores=RETRIEVER_SCORES, blend=blend)
    assert result.ids[0].tolist() == expected
    assert (np.diff(result.scores[0]) <= 0).all()


def test_a_blend_needs_the_retriever_scores():
    with pytest.raises(ValueError, match="retriever's scores"):
        rerank(IDS, 4, _scorer(), blend=Fusion("rank", 0.5))


def test_pairs_are_scored_once_across_rows():
    model = _ScoreByPassage(RERANKER)
    scorer = PairScores(model, ["q"], PASSAGES)
    rerank(IDS, 4, scorer)
    rerank(np.array([[1, 0, 2, 3, 4]]), 4, scorer)  # the same top 4 in another order: nothing new to score
    assert model.calls == 1 and scorer.computed == 4
