"""`offline-embft train` on the real all-MiniLM-L6-v2 and a handful of real statute QA pairs (CPU, offline, short
sequences to stay fast): the loss goes down, the best checkpoint is what gets saved, the output loads with
sentence-transformers and LlamaIndex, a crashed run resumes from its checkpoint, and bad input fails with one line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from offline_embft.core.config import TrainConfig
from offline_embft.core.dataset import QADataset
from offline_embft.core.errors import UserError
from offline_embft.train import embedder as train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def _subset(laws_dir: Path, name: str, start: int, count: int) -> QADataset:
    full = QADataset.load(laws_dir / "qa" / f"{name}.json")
    return full.subset(list(full.queries)[start : start + count])


@pytest.fixture(scope="module")
def data(laws_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    train_set = _subset(laws_dir, "company_law", 10, 24)
    val_set = _subset(laws_dir, "futures_law", 10, 12)
    return {
        "root": root,
        "train": train_set.save(root / "train.json"),
        "val": val_set.save(root / "val.json"),
        "train_set": train_set,
    }


def _config(data, minilm_path, out: Path, **overrides) -> TrainConfig:
    settings = {
        "train_file": str(data["train"]),
        "val_file": str(data["val"]),
        "model": str(minilm_path),
        "out_dir": str(out),
        "epochs": 2,
        "batch_size": 8,
        "lr": 2e-4,
        "max_seq_length": 48,
        "seed": 7,
        "vocab_draws": 4,
    }
    settings.update(overrides)
    return TrainConfig(**settings)


def _mnrl_loss(model, pairs) -> float:
    """MultipleNegativesRankingLoss of a model over all pairs at once (deterministic, no dropout)."""
    import torch

    queries = model.encode([q for q, _ in pairs], convert_to_tensor=True, normalize_embeddings=True)
    passages = model.encode([p for _, p in pairs], convert_to_tensor=True, normalize_embeddings=True)
    scores = 20.0 * queries @ passages.T
    return torch.nn.functional.cross_entropy(scores, torch.arange(len(pairs))).item()


def _degrade_after_checkpoint(step: int):
    """Scramble the weights right after the checkpoint of ``step`` is saved: every later evaluation is worse, so the
    best checkpoint is an EARLIER one than the last, and only ``load_best_model_at_end`` brings it back."""
    from transformers import TrainerCallback

    class Degrade(TrainerCallback):
        def on_save(self, args, state, control, model=None, **kwargs):
            if state.global_step == step:
                import torch

                generator = torch.Generator().manual_seed(0)
                with torch.no_grad():
                    for parameter in model.parameters():
                        parameter.add_(torch.randn(parameter.shape, generator=generator) * parameter.std())

    return Degrade()


def _spy_on_training():
    """Records the training arguments and the batch sampler the trainer really uses."""
    from transformers import TrainerCallback

    class Spy(TrainerCallback):
        args = None
        batch_sampler = None
        dataset = None
        columns = None

        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            Spy.args = args
            Spy.batch_sampler = train_dataloader.batch_sampler
            Spy.dataset = train_dataloader.dataset
            Spy.columns = list(train_dataloader.dataset.column_names)

    return Spy()


@pytest.fixture(scope="module")
def spy():
    return _spy_on_training()


@pytest.fixture(scope="module")
def trained(data, minilm_path, tmp_path_factory, spy):
    out = tmp_path_factory.mktemp("run") / "model"
    return train.run(_config(data, minilm_path, out), callbacks=[_degrade_after_checkpoint(3), spy])


def test_training_lowers_the_loss_and_saves_a_complete_model(trained, data, minilm_model):
    from sentence_transformers import SentenceTransformer

    pairs = data["train_set"].pairs()
    base = minilm_model
    model = SentenceTransformer(str(trained), device="cpu", local_files_only=True)
    assert _mnrl_loss(model, pairs) < 0.8 * _mnrl_loss(base, pairs)

    log = json.loads((trained / "train_log.json").read_text(encoding="utf-8"))
    summary = json.loads((trained / "train_metrics.json").read_text(encoding="utf-8"))
    step_losses = [entry["loss"] for entry in log if "loss" in entry]
    assert len(step_losses) == summary["global_step"] == 6  # 24 pairs / batch 8 x 2 epochs, one loss per step
    assert summary["vocab"]["tokens_added"] > 100 and summary["vocab"]["unk_rate_after"] < 0.001
    # The new rows: train.vocab_draws (4 here) draws scored on validation before training, the best one trained.
    draws = summary["vocab"]["draw_scores"]
    assert len(draws) == 4 and len(set(draws)) > 1 and draws[summary["vocab"]["draw_kept"]] == max(draws)
    assert summary["wall_seconds"] >= summary["train_runtime_seconds"] > 0 and summary["peak_rss_mb"] > 100
    assert (trained / "train_config.yaml").is_file() and (trained / "vocab_extension.json").is_file()
    assert not train.checkpoints_dir(trained).exists()  # finished runs leave no checkpoints behind
    # The BM25 fusion is chosen on validation among the parts alone and score fusions only (rank fusions chosen there
    # lost on unseen documents, docs/quality.md).
    chosen_on = json.loads((trained / "fusion.json").read_text(encoding="utf-8"))["chosen_on"]
    assert {c["method"] for c in chosen_on["candidates"]} == {"score"} and len(chosen_on["candidates"]) == 19


def test_the_best_checkpoint_by_ndcg_is_what_is_saved(trained, data):
    from sentence_transformers import SentenceTransformer

    log = json.loads((trained / "train_log.json").read_text(encoding="utf-8"))
    summary = json.loads((trained / "train_metrics.json").read_text(encoding="utf-8"))
    evals = {entry["step"]: entry["eval_val_cosine_ndcg@10"] for entry in log if "eval_val_cosine_ndcg@10" in entry}
    assert sorted(evals) == [3, 6]  # one evaluation per epoch
    assert evals[3] > evals[6] + 0.05  # the weights were scrambled after the epoch-1 checkpoint
    assert summary["best_step"] == 3 and summary["global_step"] == 6
    assert summary["val_metrics"]["ndcg@10"] == pytest.approx(evals[3])

    # Re-evaluating the saved model reproduces the epoch-1 evaluation, not the last one.
    model = SentenceTransformer(str(trained), device="cpu", local_files_only=True)
    cfg = _config(data, "unused", trained)
    metrics = train.build_evaluator(QADataset.load(data["val"]), cfg, model)(model)
    assert metrics["val_cosine_ndcg@10"] == pytest.approx(evals[3], abs=1e-4)
    assert metrics["val_cosine_ndcg@10"] != pytest.approx(evals[6], abs=1e-3)


def test_the_default_recipe_uses_batch_32_without_duplicates(trained, spy):
    """README: "batch 32+, NO_DUPLICATES sampler": the defaults, and the sampler the trainer really uses."""
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    from offline_embft.core.config import load_config

    defaults = TrainConfig()
    assert defaults.batch_size == 32 and defaults.loss == "mnrl" and defaults.hard_negatives == 0
    repo = Path(__file__).resolve().parents[1]
    assert load_config(repo / "configs" / "default.yaml").train.batch_size >= 32
    assert load_config(repo / "configs" / "cpu.yaml").train.batch_size >= 32
    assert spy.args.batch_sampler == BatchSamplers.NO_DUPLICATES
    assert isinstance(spy.batch_sampler, NoDuplicatesBatchSampler)
    assert spy.args.per_device_train_batch_size == 8  # what the test asked for, not a hidden default
    assert spy.args.load_best_model_at_end and spy.args.metric_for_best_model == "eval_val_cosine_ndcg@10"
    assert spy.columns == ["anchor", "positive"]


def test_saved_model_loads_with_llamaindex(trained, no_network):
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from sentence_transformers import SentenceTransformer

    text = "股东会的职权有哪些？"
    reference = SentenceTransformer(str(trained), device="cpu", local_files_only=True).encode(text)
    embedding = HuggingFaceEmbedding(model_name=str(trained), device="cpu")
    vector = np.asarray(embedding.get_text_embedding(text))
    assert vector.shape == reference.shape
    assert float(vector @ reference) == pytest.approx(1.0, abs=1e-4)


class _Crash(Exception):
    pass


def _crash_at(step: int):
    from transformers import TrainerCallback

    class CrashAfter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise _Crash(f"simulated crash at step {step}")

    return CrashAfter()


def _count_steps():
    from transformers import TrainerCallback

    class CountSteps(TrainerCallback):
        def __init__(self):
            self.steps: list[int] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(state.global_step)

    return CountSteps()


def test_a_crashed_run_resumes_from_its_checkpoint(data, minilm_path, tmp_path):
    out = tmp_path / "model"
    cfg = _config(data, minilm_path, out, val_file="")
    with pytest.raises(_Crash):
        train.run(cfg, callbacks=[_crash_at(4)])  # 3 steps per epoch: the epoch-1 checkpoint (step 3) exists
    assert not out.exists()  # atomic output: no half-written model
    assert (train.checkpoints_dir(out) / "checkpoint-3").is_dir()

    # Checkpoints of this run are not silently reused by a run with other settings.
    with pytest.raises(UserError, match="other settings or data"):
        train.run(_config(data, minilm_path, out, val_file="", lr=1e-5))

    counter = _count_steps()
    train.run(cfg, callbacks=[counter])
    summary = json.loads((out / "train_metrics.json").read_text(encoding="utf-8"))
    assert summary["resumed_from_step"] == 3
    assert counter.steps == [4, 5, 6]  # only the steps after the checkpoint were trained again
    log = json.loads((out / "train_log.json").read_text(encoding="utf-8"))
    assert [entry["step"] for entry in log if "loss" in entry] == list(range(1, 7))


def test_hard_negatives_with_cached_mnrl_and_matryoshka(data, minilm_path, tmp_path, monkeypatch):
    from sentence_transformers.sentence_transformer import losses

    built = []
    real_build_loss = train.build_loss
    monkeypatch.setattr(train, "build_loss", lambda model, cfg: built.append(real_build_loss(model, cfg)) or built[-1])
    out = tmp_path / "model"
    cfg = _config(
        data,
        minilm_path,
        out,
        epochs=1,
        val_file="",
        hard_negatives=1,
        hard_negative_source="both",
        loss="cached-mnrl",
        mini_batch_size=4,
        matryoshka_dims=[128, 64],
        query_prompt="问题：",
    )
    spy = _spy_on_training()
    train.run(cfg, callbacks=[spy])
    summary = json.loads((out / "train_metrics.json").read_text(encoding="utf-8"))
    assert summary["global_step"] == 3 and summary["best_step"] is None  # no validation set: the last step is kept
    assert np.isfinite(summary["train_loss"])

    # The loss really built: Matryoshka (the model's full 384 dims first) around CachedMNRL with the mini-batch size.
    (loss,) = built
    assert isinstance(loss, losses.MatryoshkaLoss) and list(loss.matryoshka_dims) == [384, 128, 64]
    assert isinstance(loss.loss, losses.CachedMultipleNegativesRankingLoss) and loss.loss.mini_batch_size == 4
    # The trainer's dataset carries the mined negative, a passage other than the row's positive.
    assert spy.columns == ["anchor", "positive", "negative_1"]
    rows = spy.dataset
    assert len(rows) == 24 and all(row["negative_1"] != row["positive"] for row in rows)
    assert set(rows["negative_1"]) <= set(data["train_set"].corpus.values())
    # The query prompt used in training is saved with the model, so encode_query applies it at inference.
    saved = json.loads((out / "config_sentence_transformers.json").read_text(encoding="utf-8"))
    assert saved["prompts"]["query"] == "问题："


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", "has no queries"),
        ("missing_ids", "not in the corpus"),
        ("missing_model", "not found"),
        ("raw_hf_model", "offline-embft convert"),
        ("missing_val", "validation dataset"),
    ],
)
def test_bad_input_fails_with_one_clear_line(case, message, data, minilm_path, tmp_path):
    from typer.testing import CliRunner

    from offline_embft.cli import app

    train_file, model, val = data["train"], str(minilm_path), data["val"]
    if case == "empty":
        train_file = QADataset().save(tmp_path / "empty.json")
    elif case == "missing_ids":
        broken = QADataset.load(data["train"])
        broken.relevant_docs[next(iter(broken.queries))] = ["no-such-doc"]
        train_file = broken.save(tmp_path / "broken.json")
    elif case == "missing_model":
        model = str(tmp_path / "nowhere")
    elif case == "raw_hf_model":
        raw = tmp_path / "raw"
        raw.mkdir()
        (raw / "config.json").write_text('{"model_type": "bert"}', encoding="utf-8")
    elif case == "missing_val":
        val = tmp_path / "no_val.json"
    if case == "raw_hf_model":
        model = str(raw)

    args = ["train", str(train_file), "--model", model, "--out", str(tmp_path / "out"), "--val", str(val)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_trains_without_val(data, minilm_path, tmp_path, monkeypatch, caplog):
    """The CLI contract makes --val optional: a standalone run must not pick up the pipeline's val_dataset.json."""
    from typer.testing import CliRunner

    from offline_embft.cli import app

    monkeypatch.chdir(tmp_path)  # no Dataset/datasets/val_dataset.json here, as on a user's machine
    out = tmp_path / "out"
    args = ["train", str(data["train"]), "--model", str(minilm_path), "--out", str(out), "--epochs", "1"]
    args += ["--set", "train.max_seq_length=32", "--set", "train.batch_size=8"]
    with caplog.at_level(logging.INFO, logger="offline_embft"):
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "modules.json").is_file()
    assert yaml.safe_load((out / "train_config.yaml").read_text(encoding="utf-8"))["val_file"] == ""
    assert "no validation dataset" in caplog.text and "last checkpoint" in caplog.text
    assert not json.loads((out / "train_metrics.json").read_text(encoding="utf-8"))["val_metrics"]


def test_hard_negatives_skip_positives_copies_and_near_duplicates(data):
    from offline_embft.train import negatives

    dataset = data["train_set"]
    qid = next(iter(dataset.queries))
    positive = dataset.relevant_docs[qid][0]
    text = dataset.corpus[positive]
    # The same article under another id, and a near copy (one character changed): both must never be negatives.
    dataset = QADataset(
        queries=dict(dataset.queries),
        corpus={**dataset.corpus, "copy": text, "near": text[:-2] + "。" + text[-1:]},
        relevant_docs=dict(dataset.relevant_docs),
    )
    rows = negatives.mine(dataset, 3, source="bm25")
    assert len(rows) == len(dataset.queries)
    row = next(r for r in rows if r["anchor"] == dataset.queries[qid])
    chosen = [row[f"negative_{i}"] for i in (1, 2, 3)]
    assert len(set(chosen)) == 3
    assert text not in chosen and dataset.corpus["near"] not in chosen
    for r in rows:  # no row ever uses its own positive as a negative
        assert r["positive"] not in [r[f"negative_{i}"] for i in (1, 2, 3)]
