"""Weight-space ensembling (WiSE-FT): α=0 is the base model, α=1 the fine-tuned one; added vocabulary rows kept."""

from __future__ import annotations

import pytest
import torch
from tiny_encoders import build_tiny_bert

from offline_embft.train.ensemble import choose_alpha, interpolate

TEXTS = ["公司法规定股东会行使下列职权。", "保险合同是投保人与保险人约定保险权利义务关系的协议。"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny base model, and a 'fine-tuned' copy: weights moved, two tokens added to its vocabulary."""
    from sentence_transformers import SentenceTransformer, models

    path = build_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")

    def load():
        transformer = models.Transformer(str(path), max_seq_length=32)
        return SentenceTransformer(modules=[transformer, models.Pooling(32, "mean")], device="cpu")

    base, tuned = load(), load()
    tuned.tokenizer.add_tokens(["期货", "衍生品"])
    tuned[0].auto_model.resize_token_embeddings(len(tuned.tokenizer))
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in tuned.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    return base, tuned


def _encode(model, texts=TEXTS):
    return model.encode(texts, convert_to_tensor=True)


def test_alpha_zero_is_the_base_model_and_one_the_fine_tuned(models):
    base, tuned = models
    base_state, tuned_state = base.state_dict(), {k: v.clone() for k, v in tuned.state_dict().items()}
    expected_base, expected_tuned = _encode(base), _encode(tuned)
    try:
        tuned.load_state_dict(interpolate(base_state, tuned_state, 0.0))
        torch.testing.assert_close(_encode(tuned), expected_base)
        tuned.load_state_dict(interpolate(base_state, tuned_state, 1.0))
        torch.testing.assert_close(_encode(tuned), expected_tuned)
        tuned.load_state_dict(interpolate(base_state, tuned_state, 0.5))
        assert not torch.allclose(_encode(tuned), expected_base)
    finally:
        tuned.load_state_dict(tuned_state)


def test_added_vocabulary_rows_come_from_the_fine_tuned_model(models):
    base, tuned = models
    key = next(k for k in tuned.state_dict() if k.endswith("word_embeddings.weight"))
    old, new = base.state_dict()[key], tuned.state_dict()[key]
    assert new.shape[0] == old.shape[0] + 2
    mixed = interpolate(base.state_dict(), tuned.state_dict(), 0.0)[key]
    torch.testing.assert_close(mixed[: old.shape[0]], old)
    torch.testing.assert_close(mixed[old.shape[0] :], new[old.shape[0] :])


def test_choose_alpha_keeps_the_best_and_leaves_its_weights_in_the_model(models):
    base, tuned = models
    tuned_state = {k: v.clone() for k, v in tuned.state_dict().items()}
    target = _encode(base)
    try:
        # A score that prefers the base model's embeddings: α=0 must win, and the model must hold α=0's weights.
        alpha, scores = choose_alpha(tuned, base.state_dict(), lambda m: -float((_encode(m) - target).abs().sum()))
        assert alpha == 0.0
        assert set(scores) == {0.0, 0.2, 0.4, 0.6, 0.8, 1.0}
        torch.testing.assert_close(_encode(tuned), target)
    finally:
        tuned.load_state_dict(tuned_state)


def test_interpolate_rejects_alpha_outside_unit_interval(models):
    base, tuned = models
    with pytest.raises(ValueError, match="alpha"):
        interpolate(base.state_dict(), tuned.state_dict(), 1.5)


@pytest.mark.slow
def test_train_with_weight_ensemble_saves_the_chosen_alpha_and_the_fusion(laws_dir, minilm_path, tmp_path):
    import json

    from offline_embft.core.config import TrainConfig
    from offline_embft.core.dataset import QADataset
    from offline_embft.retrieval import fusion
    from offline_embft.train import embedder as train

    def subset(name: str, start: int, count: int) -> QADataset:
        full = QADataset.load(laws_dir / "qa" / f"{name}.json")
        return full.subset(list(full.queries)[start : start + count])

    cfg = TrainConfig(
        train_file=str(subset("company_law", 10, 16).save(tmp_path / "train.json")),
        val_file=str(subset("futures_law", 10, 10).save(tmp_path / "val.json")),
        model=str(minilm_path),
        out_dir=str(tmp_path / "out"),
        epochs=1,
        batch_size=8,
        max_seq_length=48,
        weight_ensemble=True,
    )
    out = train.run(cfg)
    summary = json.loads((out / "train_metrics.json").read_text(encoding="utf-8"))
    chosen = summary["weight_ensemble"]
    scores = chosen["val_ndcg@10_by_alpha"]
    assert set(scores) == {"0", "0.2", "0.4", "0.6", "0.8", "1"}
    assert scores[f"{chosen['alpha']:g}"] == max(scores.values())
    saved = fusion.load(out)
    assert saved is not None and saved.method == summary["fusion"]["method"]
    assert saved.chosen_on["fused_ndcg@10"] >= max(saved.chosen_on["model_ndcg@10"], saved.chosen_on["bm25_ndcg@10"])


@pytest.mark.slow
def test_train_chooses_no_fusion_on_ict_pseudo_queries(laws_dir, minilm_path, tmp_path, caplog):
    """ict's validation questions are sentences of their passages: train leaves the fusion weight to real questions."""
    import json

    from offline_embft.core.config import GenerateConfig, TrainConfig
    from offline_embft.core.dataset import QADataset, made_of_pseudo_queries
    from offline_embft.generate import run as generate
    from offline_embft.retrieval import fusion
    from offline_embft.train import embedder as train

    articles = QADataset.load(laws_dir / "qa" / "futures_law.json")
    chunks = tmp_path / "val_chunks.jsonl"
    with chunks.open("w", encoding="utf-8") as handle:
        for doc_id, text in list(articles.corpus.items())[20:30]:
            handle.write(json.dumps({"id": doc_id, "text": text, "source": "futures_law", "pages": [1]}) + "\n")
    val_file = generate.run(GenerateConfig(backend="ict"), chunks, tmp_path / "val.json", validation=True)
    assert made_of_pseudo_queries(val_file)
    company = QADataset.load(laws_dir / "qa" / "company_law.json")
    cfg = TrainConfig(
        train_file=str(company.subset(list(company.queries)[10:26]).save(tmp_path / "train.json")),
        val_file=str(val_file),
        model=str(minilm_path),
        out_dir=str(tmp_path / "out"),
        epochs=1,
        batch_size=8,
        max_seq_length=48,
    )
    out = train.run(cfg)
    assert fusion.load(out) is None and not (out / fusion.FUSION_FILE).exists()
    summary = json.loads((out / "train_metrics.json").read_text(encoding="utf-8"))
    assert summary["fusion"] == {"skipped": train.PSEUDO_QUERIES_FUSION}
    assert "evaluate --questions" in caplog.text and "pseudo-queries" in caplog.text
    # The same questions written by anything but generate (no stats file saying so) are tuned on as before.
    plain = QADataset.load(val_file).save(tmp_path / "elsewhere" / "val.json")
    assert not made_of_pseudo_queries(plain)
