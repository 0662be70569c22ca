"""Tuned weighted fusion (offline_embft.fusion, ranking.weighted_fusion): never worse than its parts on its data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from offline_embft import fusion
from offline_embft.fusion import Fusion, fuse, ndcg_at_10, tune
from offline_embft.ranking import reciprocal_rank_fusion, top_k, weighted_fusion


def _ranking(scores: np.ndarray, depth: int):
    return top_k(scores, depth)


def _synthetic(seed: int, n_queries: int = 40, n_corpus: int = 60, model_noise: float = 1.0, bm25_noise: float = 1.0):
    """Two noisy retrievers over a corpus where query i's right passage is passage i."""
    rng = np.random.default_rng(seed)
    relevant = [{i} for i in range(n_queries)]
    signal = np.zeros((n_queries, n_corpus))
    signal[np.arange(n_queries), np.arange(n_queries)] = 1.0
    model = signal + model_noise * rng.normal(size=signal.shape)
    bm25 = np.maximum(0, signal * 3 + bm25_noise * rng.normal(size=signal.shape) * 2)
    return _ranking(model, 20), _ranking(bm25, 20), relevant, n_corpus


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("noise", [(0.3, 3.0), (3.0, 0.3), (1.0, 1.0)])
def test_the_chosen_fusion_is_never_worse_than_either_part_on_its_data(seed, noise):
    model, bm25, relevant, n_corpus = _synthetic(seed, model_noise=noise[0], bm25_noise=noise[1])
    choice = tune(model, bm25, relevant, n_corpus, depth=20)
    fused = fuse(model, bm25, choice, n_corpus, 20)
    achieved = ndcg_at_10(fused[0], relevant)
    assert achieved >= ndcg_at_10(model[0], relevant) - 1e-12
    assert achieved >= ndcg_at_10(bm25[0], relevant) - 1e-12
    assert achieved == pytest.approx(choice.chosen_on["fused_ndcg@10"], abs=1e-6)


def test_a_useless_model_gets_weight_zero_and_bm25_alone_is_used():
    rng = np.random.default_rng(0)
    n = 30
    relevant = [{i} for i in range(n)]
    bm25_scores = np.eye(n) * 5 + rng.random((n, n))
    model_scores = rng.random((n, n))  # knows nothing
    model, bm25 = _ranking(model_scores, 20), _ranking(bm25_scores, 20)
    choice = tune(model, bm25, relevant, n, depth=20)
    assert choice.method == "bm25" and choice.weight == 0.0
    assert ndcg_at_10(fuse(model, bm25, choice, n, 20)[0], relevant) == pytest.approx(1.0)


def test_two_complementary_parts_are_fused():
    # The model is right on the first half of the queries, BM25 on the second: only a mix gets both.
    n = 20
    relevant = [{i} for i in range(n)]
    model_scores = np.full((n, n), 0.1)
    bm25_scores = np.full((n, n), 0.1)
    for i in range(n):
        wrong = (i + 1) % n
        model_scores[i, i if i < n // 2 else wrong] = 1.0
        model_scores[i, i] = max(model_scores[i, i], 0.5)
        bm25_scores[i, i if i >= n // 2 else wrong] = 1.0
        bm25_scores[i, i] = max(bm25_scores[i, i], 0.5)
    model, bm25 = _ranking(model_scores, 10), _ranking(bm25_scores, 10)
    choice = tune(model, bm25, relevant, n, depth=10)
    assert choice.method in ("score", "rank")
    assert choice.chosen_on["fused_ndcg@10"] > max(choice.chosen_on["model_ndcg@10"], choice.chosen_on["bm25_ndcg@10"])


def test_rank_fusion_with_equal_weights_orders_like_rrf():
    model, bm25, _, n_corpus = _synthetic(1)
    id_rank = np.arange(n_corpus)
    rrf_ids, _ = reciprocal_rank_fusion([model[0], bm25[0]], n_corpus, 20, id_rank)
    ids, _ = weighted_fusion([model, bm25], [0.5, 0.5], n_corpus, 20, id_rank, method="rank")
    np.testing.assert_array_equal(ids, rrf_ids)


def test_score_fusion_at_the_extremes_is_one_part():
    model, bm25, _, n_corpus = _synthetic(2)
    ids, _ = weighted_fusion([model, bm25], [1.0, 0.0], n_corpus, 10, method="score")
    np.testing.assert_array_equal(ids, model[0][:, :10])


def test_ndcg_matches_sentence_transformers_evaluator():
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    model, _, relevant, n_corpus = _synthetic(3)
    relevant = [r | ({(i + 7) % n_corpus} if i % 3 == 0 else set()) for i, r in enumerate(relevant)]
    corpus = {str(j): f"p{j}" for j in range(n_corpus)}
    evaluator = InformationRetrievalEvaluator(
        {str(i): f"q{i}" for i in range(len(relevant))},
        corpus,
        {str(i): {str(j) for j in r} for i, r in enumerate(relevant)},
        write_csv=False,
    )
    results = [
        [{"corpus_id": str(j), "score": float(s)} for j, s in zip(ids, scores, strict=True)]
        for ids, scores in zip(*model, strict=True)
    ]
    expected = evaluator.compute_metrics(results)["ndcg@k"][10]
    assert ndcg_at_10(model[0], relevant) == pytest.approx(expected)


def test_fusion_json_round_trip_and_bad_files(tmp_path, caplog):
    choice = Fusion("score", 0.35, chosen_on={"queries": 3})
    choice.save(tmp_path)
    loaded = fusion.load(tmp_path)
    assert loaded == choice
    assert "0.35" in loaded.describe()
    assert fusion.load(tmp_path / "missing") is None
    (tmp_path / fusion.FUSION_FILE).write_text(json.dumps({"method": "magic", "weight": 2}), encoding="utf-8")
    assert fusion.load(tmp_path) is None
    assert "ignoring" in caplog.text
