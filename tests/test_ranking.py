"""Top-k with deterministic ties, and reciprocal-rank fusion (dense rankings for evaluate, id lists for negatives)."""

import numpy as np
import pytest

from offline_embft.retrieval.ranking import fuse_ranked_lists, reciprocal_rank_fusion, top_k


def test_top_k_orders_ties_by_id_rank():
    scores = np.array([[0.5, 0.9, 0.5, 0.5, 0.1]])
    ids, values = top_k(scores, 3)
    assert ids.tolist() == [[1, 0, 2]] and values.tolist() == [[0.9, 0.5, 0.5]]
    ids, _ = top_k(scores, 3, id_rank=np.array([4, 0, 3, 1, 2]))  # passage 3 has the smallest id of the tied ones
    assert ids.tolist() == [[1, 3, 2]]


def test_reciprocal_rank_fusion_rewards_agreement():
    a = np.array([[0, 1, 2]])
    b = np.array([[1, 3, 0]])
    ids, scores = reciprocal_rank_fusion([a, b], n_corpus=5, depth=5, id_rank=np.arange(5), rrf_k=60)
    # 1 is near the top of both lists, 0 of both but lower in b; 3 and 2 are in one list each; 4 in none.
    assert ids.tolist() == [[1, 0, 3, 2, 4]]
    assert scores[0].tolist() == pytest.approx([1 / 62 + 1 / 61, 1 / 61 + 1 / 63, 1 / 62, 1 / 63, 0.0])


def test_fused_id_lists_agree_with_the_dense_fusion():
    lists = [{"q": ["p0", "p1", "p2"]}, {"q": ["p1", "p3", "p0"]}]
    fused = fuse_ranked_lists(lists, rrf_k=60)
    ids, _ = reciprocal_rank_fusion([np.array([[0, 1, 2]]), np.array([[1, 3, 0]])], 4, 4, np.arange(4), rrf_k=60)
    assert fused["q"] == [f"p{i}" for i in ids[0].tolist()]
    assert fuse_ranked_lists(lists[:1]) is lists[0]  # one ranking passes through unchanged


def test_docstring_examples_hold():
    import doctest

    from offline_embft.retrieval import ranking

    assert doctest.testmod(ranking).failed == 0


def test_id_ranks_order_passages_by_corpus_id():
    from offline_embft.retrieval.ranking import id_ranks

    ranks = id_ranks(["c", "a", "b"])
    assert ranks.tolist() == [2, 0, 1]
    # top_k breaks a tie by it: equal scores, the smaller corpus id first
    ids, _ = top_k(np.array([[1.0, 1.0, 1.0]]), 3, ranks)
    assert ids.tolist() == [[1, 2, 0]]
