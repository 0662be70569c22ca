"""Vocabulary extension on the real all-MiniLM-L6-v2 and real statute text: exactly the UNK characters are added,
the UNK rate drops to ~0, the model computes the same thing until it is trained, and the extension survives a save."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from offline_embft.core.tokenizer_check import measure
from offline_embft.train.vocab import AUTO_MIN_UNK_RATE, choose_draw, extend_vocabulary

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def base_model(minilm_model):
    return minilm_model


@pytest.fixture
def model(minilm):
    return minilm


@pytest.fixture(scope="module")
def texts(laws_dir):
    data = json.loads((laws_dir / "qa" / "company_law.json").read_text(encoding="utf-8"))
    queries = list(data["queries"].values())[:40]
    passages = list(data["corpus"].values())[:40]
    return queries + passages


def _unk_chars_by_brute_force(tokenizer, texts):
    """Every distinct character that the tokenizer turns into [UNK] when it stands alone."""
    chars = {ch for text in texts for ch in text if not ch.isspace()}
    return {ch for ch in chars if tokenizer.tokenize(ch) == [tokenizer.unk_token]}


def test_adds_exactly_the_unk_characters_and_removes_unk(model, texts):
    expected = _unk_chars_by_brute_force(model.tokenizer, texts)
    before = len(model.tokenizer)
    english = "The board of directors shall convene a meeting in 2023."
    english_tokens = model.tokenizer.tokenize(english)

    report = extend_vocabulary(model, texts, mode="on")

    assert set(report.added) == expected
    assert report.tokens_added == len(expected) == len(model.tokenizer) - before
    assert report.unk_rate_before > 0.5  # MiniLM reads most Chinese characters as [UNK]
    assert report.unk_rate_after < 0.001
    assert measure(model.tokenizer, texts).unk_rate == pytest.approx(report.unk_rate_after)
    # Known characters and words are tokenized as before: nothing but UNK characters was touched.
    assert model.tokenizer.tokenize(english) == english_tokens
    assert model[0].auto_model.get_input_embeddings().weight.shape[0] == len(model.tokenizer)


def test_choose_draw_keeps_the_rows_that_score_best(model, texts):
    """Each draw is scored with the model as it stands; the best draw's rows are what the model keeps."""
    report = extend_vocabulary(model, texts, mode="on")
    weight = model[0].auto_model.get_input_embeddings().weight
    known = report.vocab_size_before
    trained_rows = weight[:known].detach().clone()
    seen = []
    scores = iter([0.2, 0.5, 0.1, 0.5])  # draw 1 is best; draw 3 only ties it

    def score(scored_model):
        assert scored_model is model
        seen.append(weight[known:].detach().clone())
        return next(scores)

    choose_draw(model, report, score, draws=4, seed=7)

    assert report.draw_scores == [0.2, 0.5, 0.1, 0.5] and report.draw_kept == 1
    assert all(not a.equal(b) for a, b in itertools.combinations(seen, 2))  # four different draws
    assert weight[known:].detach().equal(seen[1])
    assert weight[:known].detach().equal(trained_rows)  # the model's own rows are never redrawn
    # Reproducible: the same seed draws the same rows.
    again = []
    choose_draw(model, report, lambda m: again.append(weight[known:].detach().clone()) or 0.0, draws=3, seed=7)
    assert again[1].equal(seen[1]) and again[2].equal(seen[2])
    assert report.draw_kept == 0 and weight[known:].detach().equal(again[0])  # ties keep the earlier draw


def test_choose_draw_with_one_draw_changes_nothing(model, texts):
    report = extend_vocabulary(model, texts, mode="on")
    rows = model[0].auto_model.get_input_embeddings().weight.detach().clone()
    choose_draw(model, report, lambda m: pytest.fail("a single draw needs no score"), draws=1, seed=7)
    assert report.draw_scores == [] and model[0].auto_model.get_input_embeddings().weight.detach().equal(rows)


def test_unk_init_keeps_the_base_models_function(base_model, model, texts):
    sample = texts[:8]
    before = base_model.encode(sample, convert_to_numpy=True)

    extend_vocabulary(model, texts, mode="on", init="unk")

    ids = model.tokenizer(sample[0])["input_ids"]
    assert model.tokenizer.unk_token_id not in ids  # the text now reads as real tokens ...
    after = model.encode(sample, convert_to_numpy=True)
    np.testing.assert_allclose(after, before, atol=1e-5)  # ... yet the untrained model computes the same embedding


def test_sample_init_draws_rows_from_the_existing_rows_distribution(model, texts):
    """docs/benchmarks.md (Train): new rows are "sampled from the existing rows' distribution": same mean, same
    spread per dimension, and the same correlations between dimensions (a per-dimension normal would have none)."""
    import torch

    known = len(model.tokenizer)
    torch.manual_seed(0)
    report = extend_vocabulary(model, texts, mode="on", init="sample")
    weight = model[0].auto_model.get_input_embeddings().weight.detach().numpy()
    old, new = weight[:known], weight[known : known + report.tokens_added]
    assert new.shape[0] == report.tokens_added > 300

    assert np.linalg.norm(new.mean(0) - old.mean(0)) < 0.15 * np.linalg.norm(old.std(0))
    ratio = new.std(0) / old.std(0)  # 1.0 when the spread matches; 0 for a copied (unk/mean) row
    assert 0.9 < np.median(ratio) < 1.1 and ratio.min() > 0.8 and ratio.max() < 1.25
    upper = np.triu_indices(old.shape[1], 1)
    assert np.corrcoef(np.cov(old.T)[upper], np.cov(new.T)[upper])[0, 1] > 0.4  # ~0.67 here; ~0.0 if independent
    assert len({row.tobytes() for row in new}) == len(new)  # every new character gets its own row


def test_off_and_auto_on_a_covered_corpus_change_nothing(model):
    size = len(model.tokenizer)
    assert extend_vocabulary(model, ["公司法"], mode="off").tokens_added == 0
    english = ["The board of directors shall convene a meeting every quarter."] * 200 + ["龘"]
    report = extend_vocabulary(model, english, mode="auto")
    assert report.unk_rate_before < AUTO_MIN_UNK_RATE
    assert report.tokens_added == 0 and "below" in report.skipped_reason
    assert len(model.tokenizer) == size


def test_extension_survives_save_and_load(model, texts, tmp_path):
    from sentence_transformers import SentenceTransformer

    report = extend_vocabulary(model, texts, mode="on")
    model.save(str(tmp_path / "m"))
    loaded = SentenceTransformer(str(tmp_path / "m"), device="cpu", local_files_only=True)

    assert len(loaded.tokenizer) == len(model.tokenizer)
    assert loaded.tokenizer.tokenize(report.added[0]) == [report.added[0]]
    assert measure(loaded.tokenizer, texts).unk_rate < 0.001
    np.testing.assert_allclose(loaded.encode(texts[:4]), model.encode(texts[:4]), atol=1e-5)
