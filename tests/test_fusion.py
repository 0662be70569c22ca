"""Tuned weighted fusion (offline_embft.retrieval.fusion, ranking.weighted_fusion): never worse than its parts on its
data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from offline_embft.retrieval import fusion
from offline_embft.retrieval.fusion import Fusion, fuse, ndcg_at_10, tune
from offline_embft.retrieval.ranking import reciprocal_rank_fusion, top_k, weighted_fusion


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


# ---------------------------------------------------------------------------------------------------------------
# Cross-fitting: no question is ranked by a weight chosen on it


def _folds_that_disagree(n: int = 24, n_folds: int = 2, seed: int = 0):
    """Rankings where the model is right exactly on fold 0's questions and BM25 exactly on the other folds'."""
    folds = fusion.assign_folds(n, n_folds, seed)
    relevant = [{i} for i in range(n)]
    model_scores = np.full((n, n), 0.1)
    bm25_scores = np.full((n, n), 0.1)
    for i in range(n):
        right, wrong = (model_scores, bm25_scores) if folds[i] == 0 else (bm25_scores, model_scores)
        right[i, i] = 1.0
        wrong[i, i] = 0.0  # last: outside the top 10
        wrong[i, (i + 1) % n] = 1.0
    return _ranking(model_scores, n), _ranking(bm25_scores, n), relevant, folds


def test_cross_fit_ranks_each_question_with_the_choice_of_the_other_fold():
    model, bm25, relevant, folds = _folds_that_disagree()
    result = fusion.cross_fit(model, bm25, relevant, len(relevant), n_folds=2, depth=24)
    np.testing.assert_array_equal(result.folds, folds)
    # Chosen on fold 1 (fold 0 left out), BM25 alone is perfect; chosen on fold 0, the model alone is.
    assert [c.method for c in result.fold_choices] == ["bm25", "model"]
    assert [c.chosen_on["folds_left_out"] for c in result.fold_choices] == [[0], [1]]
    assert all(c.chosen_on["fused_ndcg@10"] == 1.0 for c in result.fold_choices)
    # So every question gets the retriever that is wrong on it: honest ndcg@10 is 0, not the 1.0 of either fold.
    np.testing.assert_array_equal(result.ids[folds == 0], bm25[0][folds == 0])
    np.testing.assert_array_equal(result.ids[folds == 1], model[0][folds == 1])
    assert ndcg_at_10(result.ids, relevant) == 0.0


def test_a_fold_is_ranked_with_the_choice_of_the_other_four_only():
    # 25 questions in 5 folds: the model is right on fold 0's 5 questions only. Chosen on all 25, a score fusion wins;
    # chosen on the other four folds (fold 0 left out) BM25 alone is perfect, and that is what ranks fold 0.
    model, bm25, relevant, folds = _folds_that_disagree(n=25, n_folds=fusion.CROSS_FIT_FOLDS)
    result = fusion.cross_fit(model, bm25, relevant, len(relevant), depth=25)
    np.testing.assert_array_equal(result.folds, folds)
    assert result.overall.method == "score"
    first = result.fold_choices[0]
    assert first.method == "bm25" and first.chosen_on["queries"] == 20
    np.testing.assert_array_equal(result.ids[folds == 0], bm25[0][folds == 0])
    assert ndcg_at_10(result.ids[folds == 0], [r for r, f in zip(relevant, folds, strict=True) if f == 0]) == 0.0


def test_five_folds_over_six_questions_hold_each_question_out_once_and_choose_without_it():
    model, bm25, relevant, n_corpus = _synthetic(2, n_queries=6, n_corpus=30, model_noise=1.0, bm25_noise=1.0)
    result = fusion.cross_fit(model, bm25, relevant, n_corpus, depth=20)  # the default fold count
    assert fusion.CROSS_FIT_FOLDS == 5 and len(result.fold_choices) == 5
    sizes = np.bincount(result.folds, minlength=5)
    assert sorted(sizes.tolist()) == [1, 1, 1, 1, 2]  # every question in exactly one fold; sizes differ by ≤ 1
    for fold, choice in enumerate(result.fold_choices):
        held, rest = result.folds == fold, result.folds != fold
        assert choice.chosen_on["folds_left_out"] == [fold]
        assert choice.chosen_on["queries"] == 6 - sizes[fold]  # chosen without the fold's own questions …
        expected = tune(  # … and exactly as tune chooses on the other folds alone
            (model[0][rest], model[1][rest]),
            (bm25[0][rest], bm25[1][rest]),
            [r for r, keep in zip(relevant, rest, strict=True) if keep],
            n_corpus,
            depth=20,
        )
        expected.chosen_on["folds_left_out"] = [fold]
        assert choice == expected
        held_ids, held_scores = fuse(
            (model[0][held], model[1][held]), (bm25[0][held], bm25[1][held]), choice, n_corpus, 20
        )
        np.testing.assert_array_equal(result.ids[held], held_ids)
        np.testing.assert_array_equal(result.scores[held], held_scores)


@pytest.mark.parametrize("n_folds", [2, 3, 5, 10])
@pytest.mark.parametrize("n_queries", [10, 11, 37, 155])
def test_assign_folds_deals_every_question_once_in_folds_of_near_equal_size(n_queries, n_folds):
    folds = fusion.assign_folds(n_queries, n_folds, seed=3)
    sizes = np.bincount(folds, minlength=n_folds)
    assert folds.shape == (n_queries,) and set(folds.tolist()) == set(range(n_folds))
    assert sizes.sum() == n_queries and sizes.max() - sizes.min() <= 1
    np.testing.assert_array_equal(folds, fusion.assign_folds(n_queries, n_folds, seed=3))


def test_cross_fit_overall_choice_is_tune_on_every_question_and_it_is_deterministic():
    model, bm25, relevant, n_corpus = _synthetic(4, model_noise=1.0, bm25_noise=1.0)
    result = fusion.cross_fit(model, bm25, relevant, n_corpus, depth=20)
    assert result.overall == tune(model, bm25, relevant, n_corpus, depth=20)
    again = fusion.cross_fit(model, bm25, relevant, n_corpus, depth=20)
    np.testing.assert_array_equal(again.ids, result.ids)
    np.testing.assert_array_equal(again.scores, result.scores)
    assert again.fold_choices == result.fold_choices
    sizes = np.bincount(result.folds)
    assert sizes.tolist() == [8] * fusion.CROSS_FIT_FOLDS and result.ids.shape == model[0].shape
    assert not np.array_equal(fusion.assign_folds(40, seed=1), result.folds)  # the seed picks the split
    with pytest.raises(ValueError, match="over 5 folds needs at least 5 questions, got 4"):
        fusion.assign_folds(4)


def test_on_the_users_questions_a_fusion_needs_a_clear_gain_over_the_better_part():
    """cross_fit (real questions) keeps the better part alone unless a fusion beats it by CROSS_FIT_MARGIN; tune's
    own margin (train's validation choice) is smaller, so the same small gain is taken there."""
    for seed in range(60):  # a weak model that adds a little to BM25: a gain between the two margins
        model, bm25, relevant, n = _synthetic(seed, model_noise=2.0, bm25_noise=0.6)
        chosen = tune(model, bm25, relevant, n, depth=20)
        on = chosen.chosen_on
        gain = on["fused_ndcg@10"] - max(on["model_ndcg@10"], on["bm25_ndcg@10"])
        if fusion.MARGIN < gain <= fusion.CROSS_FIT_MARGIN:
            break
    else:
        pytest.fail("no seed gives a gain between the margins")
    assert chosen.method in fusion.METHODS
    crossed = fusion.cross_fit(model, bm25, relevant, n, depth=20)
    better_alone = "bm25" if on["bm25_ndcg@10"] >= on["model_ndcg@10"] else "model"
    assert crossed.overall.method == better_alone
    assert fusion.cross_fit(model, bm25, relevant, n, depth=20, margin=fusion.MARGIN).overall == chosen
