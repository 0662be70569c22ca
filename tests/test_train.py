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

from offline_embft import train
from offline_embft.config import TrainConfig
from offline_embft.dataset import QADataset
from offline_embft.errors import UserError

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def _subset(laws_dir: Path, name: str, start: int, count: int) -> QADataset:
    full = QADataset.load(laws_dir / "qa" / f"{name}.json")
    qids = list(full.queries)[start : start + count]
    docs = {doc for qid in qids for doc in full.relevant_docs[qid]}
    return QADataset(
        queries={qid: full.queries[qid] for qid in qids},
        corpus={doc: full.corpus[doc] for doc in docs},
        relevant_docs={qid: full.relevant_docs[qid] for qid in qids},
    )


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


@pytest.fixture(scope="module")
def trained(data, minilm_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "model"
    return train.run(_config(data, minilm_path, out))


def test_training_lowers_the_loss_and_saves_a_complete_model(trained, data, minilm_path):
    from sentence_transformers import SentenceTransformer

    pairs = data["train_set"].pairs()
    base = SentenceTransformer(str(minilm_path), device="cpu", local_files_only=True)
    model = SentenceTransformer(str(trained), device="cpu", local_files_only=True)
    assert _mnrl_loss(model, pairs) < 0.8 * _mnrl_loss(base, pairs)

    log = json.loads((trained / "train_log.json").read_text(encoding="utf-8"))
    summary = json.loads((trained / "train_metrics.json").read_text(encoding="utf-8"))
    step_losses = [entry["loss"] for entry in log if "loss" in entry]
    assert len(step_losses) == summary["global_step"] == 6  # 24 pairs / batch 8 x 2 epochs, one loss per step
    assert summary["vocab"]["tokens_added"] > 100 and summary["vocab"]["unk_rate_after"] < 0.001
    assert summary["wall_seconds"] > 0 and summary["peak_rss_mb"] > 0
    assert (trained / "train_config.yaml").is_file() and (trained / "vocab_extension.json").is_file()
    assert not train.checkpoints_dir(trained).exists()  # finished runs leave no checkpoints behind


def test_the_best_checkpoint_by_ndcg_is_what_is_saved(trained, data):
    from sentence_transformers import SentenceTransformer

    log = json.loads((trained / "train_log.json").read_text(encoding="utf-8"))
    summary = json.loads((trained / "train_metrics.json").read_text(encoding="utf-8"))
    evals = {entry["step"]: entry["eval_val_cosine_ndcg@10"] for entry in log if "eval_val_cosine_ndcg@10" in entry}
    assert len(evals) == 2  # one evaluation per epoch
    assert summary["best_step"] == max(evals, key=lambda step: (evals[step], -step))
    assert summary["val_metrics"]["ndcg@10"] == pytest.approx(max(evals.values()))

    # Re-evaluating the saved model reproduces the best evaluation, whichever epoch it came from.
    model = SentenceTransformer(str(trained), device="cpu", local_files_only=True)
    cfg = _config(data, "unused", trained)
    metrics = train.build_evaluator(QADataset.load(data["val"]), cfg, model)(model)
    assert metrics["val_cosine_ndcg@10"] == pytest.approx(summary["val_metrics"]["ndcg@10"], abs=1e-4)


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


def test_hard_negatives_with_cached_mnrl_and_matryoshka(data, minilm_path, tmp_path):
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
        mini_batch_size=8,
        matryoshka_dims=[128, 64],
        query_prompt="问题：",
    )
    train.run(cfg)
    summary = json.loads((out / "train_metrics.json").read_text(encoding="utf-8"))
    assert summary["global_step"] == 3 and summary["best_step"] is None  # no validation set: the last step is kept
    assert np.isfinite(summary["train_loss"])
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
    from offline_embft import negatives

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
