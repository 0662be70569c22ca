"""The reranker stage on tiny random models (CPU, offline, seconds): the cross-encoder dataset, a crashed run that
resumes, the best checkpoint by validation, the output loading in CrossEncoder / LlamaIndex / LangChain, the
"retriever → reranker" rows of evaluate, and the stage's place in the pipeline."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from offline_embft.core.config import EvaluateConfig, TrainRerankerConfig, load_config
from offline_embft.core.dataset import QADataset
from offline_embft.core.errors import UserError
from offline_embft.train import reranker as train_reranker
from tests.tiny_encoders import build_tiny_bert

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[1]


def _subset(laws_dir: Path, name: str, start: int, count: int) -> QADataset:
    full = QADataset.load(laws_dir / "qa" / f"{name}.json")
    return full.subset(list(full.queries)[start : start + count])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny BERT as the base reranker (a raw encoder: CrossEncoder adds the head) and as a retriever."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    root = tmp_path_factory.mktemp("tiny")
    # 512 positions like real encoders: LlamaIndex's SentenceTransformerRerank always loads with max_length=512.
    bert = build_tiny_bert(root / "bert", max_length=512)
    word = Transformer(str(bert), max_seq_length=96)
    retriever = SentenceTransformer(modules=[word, Pooling(word.get_embedding_dimension(), "mean")])
    retriever.save(str(root / "retriever"))
    return {"reranker": bert, "retriever": root / "retriever"}


@pytest.fixture(scope="module")
def data(laws_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("rerank_data")
    train_set = _subset(laws_dir, "company_law", 0, 12)
    # A second id holding a positive's exact text: it must never become that question's negative.
    first_qid = next(iter(train_set.queries))
    positive = train_set.relevant_docs[first_qid][0]
    train_set.corpus["copy-of-a-positive"] = train_set.corpus[positive]
    val_set = _subset(laws_dir, "insurance_law", 0, 8)
    return {
        "train": train_set.save(root / "train.json"),
        "val": val_set.save(root / "val.json"),
        "train_set": train_set,
        "val_set": val_set,
    }


def _config(data, models, out: Path, **overrides) -> TrainRerankerConfig:
    settings = {
        "train_file": str(data["train"]),
        "val_file": str(data["val"]),
        "model": str(models["reranker"]),
        "retriever": str(models["retriever"]),
        "out_dir": str(out),
        "negatives": 3,
        "loss": "bce",
        "epochs": 2,
        "batch_size": 16,
        "lr": 1e-3,
        "max_length": 96,
        "rerank_top": 5,
        "seed": 3,
    }
    settings.update(overrides)
    return TrainRerankerConfig(**settings)


@pytest.mark.parametrize("source", ["model", "both"])
def test_examples_have_the_positives_and_clean_unique_negatives(data, models, source, tmp_path):
    from offline_embft.core.model_files import load_sentence_transformer

    dataset = data["train_set"]
    cfg = _config(data, models, tmp_path / "out", negative_source=source)
    examples = train_reranker.build_examples(dataset, cfg, load_sentence_transformer(models["retriever"]))
    assert [e.query for e in examples] == list(dataset.queries.values())
    for qid, example in zip(dataset.queries, examples, strict=True):
        assert example.positives == [dataset.corpus[doc] for doc in dataset.relevant_docs[qid]]
        assert len(example.negatives) == cfg.negatives
        assert len(set(example.negatives)) == len(example.negatives)
        assert not set(example.negatives) & set(example.positives)  # the copied positive is not a negative either

    pairs = train_reranker.training_dataset(examples, "bce")
    keys = list(zip(pairs["query"], pairs["passage"], strict=True))
    assert len(keys) == len(set(keys)) == len(examples) * (1 + cfg.negatives)  # no (question, passage) pair twice
    assert sum(pairs["label"]) == sum(len(e.positives) for e in examples)
    listwise = train_reranker.training_dataset(examples, "lambda")
    assert all(labels[0] == 1 and sum(labels) == 1 for labels in listwise["labels"])
    tuples = train_reranker.training_dataset(examples, "mnrl")
    assert tuples.column_names == ["query", "positive", "negative_1", "negative_2", "negative_3"]


def test_without_a_retriever_the_negatives_come_from_bm25_as_its_help_says(data, models, tmp_path, caplog):
    """train_reranker.retriever's help: "empty: BM25 only". The run says so in the log and in its saved config."""
    import yaml

    from offline_embft.core.config.help import field_help

    assert "empty: BM25 only" in field_help(TrainRerankerConfig, "retriever")
    cfg = _config(data, models, tmp_path / "out", retriever="", epochs=1, negative_source="model")
    with caplog.at_level(logging.WARNING, logger="offline_embft.train.reranker"):
        out = train_reranker.run(cfg)
    assert "negatives and validation candidates come from BM25 only, not from model" in caplog.text
    assert yaml.safe_load((out / "train_config.yaml").read_text(encoding="utf-8"))["negative_source"] == "bm25"
    assert cfg.negative_source == "model", "the caller's config is left as it was"
    summary = json.loads((out / "train_metrics.json").read_text(encoding="utf-8"))
    assert summary["train_questions"] == len(data["train_set"].queries) and "blend" in summary  # BM25's candidates
    with pytest.raises(UserError, match="needs the fine-tuned embedding model"):  # called directly, no fallback
        train_reranker.build_examples(data["train_set"], cfg, retriever=None)


class _Crash(RuntimeError):
    pass


def _crash_at(step: int):
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise _Crash(f"simulated crash at step {step}")

    return Crash()


@pytest.fixture(scope="module")
def trained(data, models, tmp_path_factory):
    out = tmp_path_factory.mktemp("rerank_run") / "reranker"
    return train_reranker.run(_config(data, models, out))


def test_training_saves_the_best_checkpoint_with_logs(trained):
    metrics = json.loads((trained / "train_metrics.json").read_text(encoding="utf-8"))
    log = json.loads((trained / "train_log.json").read_text(encoding="utf-8"))
    # 12 questions x (1 positive + 3 negatives) = 48 pairs, batch 16: 3 steps per epoch, evaluated after each.
    assert metrics["train_rows"] == 48 and metrics["global_step"] == 6
    evals = {entry["step"]: entry[train_reranker.BEST_METRIC] for entry in log if train_reranker.BEST_METRIC in entry}
    assert sorted(evals) == [3, 6]
    assert metrics["best_step"] == max(evals, key=evals.get)
    assert metrics["val_metrics"]["ndcg@10"] == evals[metrics["best_step"]]
    assert (trained / "train_config.yaml").is_file() and (trained / "vocab_extension.json").is_file()
    assert json.loads((trained / "vocab_extension.json").read_text(encoding="utf-8"))["tokens_added"] > 0
    assert not train_reranker.checkpoints_dir(trained).exists()


def test_output_loads_in_crossencoder_llamaindex_and_langchain(trained, data, no_network):
    from sentence_transformers import CrossEncoder

    val = data["val_set"]
    qid = next(iter(val.queries))
    query, passages = val.queries[qid], list(val.corpus.values())
    model = CrossEncoder(str(trained))
    ranked = model.rank(query, passages)
    assert sorted(hit["corpus_id"] for hit in ranked) == list(range(len(passages)))
    scores = model.predict([(query, p) for p in passages])
    assert np.isfinite(scores).all() and np.ptp(scores) > 0  # a trained head, not a constant

    from llama_index.core.postprocessor import SentenceTransformerRerank
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    nodes = [NodeWithScore(node=TextNode(text=p, id_=str(i)), score=0.0) for i, p in enumerate(passages)]
    rerank = SentenceTransformerRerank(model=str(trained), top_n=3, device="cpu")
    top = rerank.postprocess_nodes(nodes, query_bundle=QueryBundle(query))
    # LlamaIndex loads with max_length=512 whatever the model says: compare with the model read as long.
    ranked_512 = CrossEncoder(str(trained), max_length=512).rank(query, passages)
    assert [n.node.node_id for n in top] == [str(hit["corpus_id"]) for hit in ranked_512[:3]]

    from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
    from langchain_community.cross_encoders import HuggingFaceCrossEncoder
    from langchain_core.documents import Document

    compressor = CrossEncoderReranker(
        model=HuggingFaceCrossEncoder(model_name=str(trained), model_kwargs={"device": "cpu"}), top_n=3
    )
    docs = compressor.compress_documents([Document(page_content=p) for p in passages], query)
    assert [d.page_content for d in docs] == [passages[hit["corpus_id"]] for hit in ranked[:3]]


def test_a_crashed_run_resumes_from_its_checkpoint(data, models, tmp_path):
    out = tmp_path / "reranker"
    cfg = _config(data, models, out, val_file="")
    with pytest.raises(_Crash):
        train_reranker.run(cfg, callbacks=[_crash_at(4)])  # 3 steps per epoch: the epoch-1 checkpoint exists
    assert not out.exists()  # atomic output: no half-written model
    assert (train_reranker.checkpoints_dir(out) / "checkpoint-3").is_dir()

    with pytest.raises(UserError, match="other settings or data"):
        train_reranker.run(_config(data, models, out, val_file="", lr=1e-5))

    steps: list[int] = []
    from transformers import TrainerCallback

    class Count(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    train_reranker.run(cfg, callbacks=[Count()])
    metrics = json.loads((out / "train_metrics.json").read_text(encoding="utf-8"))
    assert metrics["resumed_from_step"] == 3 and steps == [4, 5, 6]
    log = json.loads((out / "train_log.json").read_text(encoding="utf-8"))
    assert [entry["step"] for entry in log if "loss" in entry] == list(range(1, 7))


@pytest.mark.parametrize("loss", ["mnrl", "lambda"])
def test_the_other_losses_train(data, models, loss, tmp_path):
    out = train_reranker.run(_config(data, models, tmp_path / "r", loss=loss, epochs=1, batch_size=4))
    metrics = json.loads((out / "train_metrics.json").read_text(encoding="utf-8"))
    assert metrics["loss"] == loss and np.isfinite(metrics["train_loss"])
    # One epoch: a single evaluation could not choose a checkpoint, so validation is skipped (it costs a full rerank).
    log = json.loads((out / "train_log.json").read_text(encoding="utf-8"))
    assert metrics["best_step"] is None and not any(train_reranker.BEST_METRIC in entry for entry in log)


def test_evaluate_adds_retriever_to_reranker_rows(trained, data, models, tmp_path):
    from offline_embft.evaluate import run as evaluate
    from offline_embft.retrieval import rerank

    cfg = EvaluateConfig(
        dataset=str(data["val"]),
        models=[str(models["retriever"])],
        bm25=True,
        hybrid=True,
        out_dir=str(tmp_path / "results"),
        reranker=str(trained),
        base_reranker=str(models["reranker"]),
        rerank_top=5,
    )
    evaluate.run(cfg)
    results = json.loads((tmp_path / "results" / "metrics.json").read_text(encoding="utf-8"))["results"]
    labels = [r["model"] for r in results]
    assert labels == [
        "retriever",
        "BM25",
        "retriever+BM25",
        "retriever → reranker",
        "retriever+BM25 → reranker",
        "retriever → bert",
        "retriever+BM25 → bert",
    ]
    assert [r["info"]["reranker_role"] for r in results[3:]] == ["fine-tuned"] * 2 + ["base"] * 2
    assert all(r["info"]["ms_per_query"] > 0 for r in results[3:])
    # Only the top 5 is re-ordered: the same 5 passages, and everything below in the retriever's order.
    predictions = [json.loads(line) for line in (tmp_path / "results" / "predictions.jsonl").open(encoding="utf-8")]
    for row in predictions:
        before, after = row["results"]["retriever"]["ids"], row["results"]["retriever → reranker"]["ids"]
        assert sorted(before[:5]) == sorted(after[:5]) and before[5:] == after[5:]
    # The base reranker (no blend) re-orders on its own; the fine-tuned one carries the blend chosen on these very
    # questions, so on them it is never worse than the retriever it re-orders.
    reordered = sum(
        row["results"]["retriever"]["ids"][:5] != row["results"]["retriever → bert"]["ids"][:5] for row in predictions
    )
    assert reordered > 0
    by_label = {r["model"]: r for r in results}
    assert by_label["retriever → reranker"]["ndcg@10"] >= by_label["retriever"]["ndcg@10"] - 1e-9
    assert by_label["retriever → reranker"]["info"]["blend"] == rerank.describe_blend(rerank.load_blend(trained))
    assert by_label["retriever → bert"]["info"]["blend"] == "the reranker's order alone"
    report = (tmp_path / "results" / "report.md").read_text(encoding="utf-8")
    assert "Second stage `retriever → reranker` (fine-tuned reranker)" in report
    assert "retriever → reranker" in (tmp_path / "results" / "metrics.csv").read_text(encoding="utf-8")


def test_cli_train_reranker_and_its_errors(data, models, tmp_path):
    from typer.testing import CliRunner

    from offline_embft.cli import app

    missing = tmp_path / "nowhere"
    args = ["train-reranker", str(data["train"]), "--model", str(missing), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*args, "--retriever", str(models["retriever"]), "--val", str(data["val"])])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "not found" in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_train_reranker_without_val_asks_for_no_validation(data, tmp_path, monkeypatch):
    """As `train`: a standalone TRAIN.json without --val must not pick up the pipeline's val_dataset.json."""
    from typer.testing import CliRunner

    from offline_embft.cli import app
    from offline_embft.train import reranker as train_reranker

    seen = []
    monkeypatch.setattr(train_reranker, "run", lambda cfg, callbacks=None: seen.append(cfg) or Path(cfg.out_dir))
    monkeypatch.chdir(tmp_path)
    args = ["train-reranker", str(data["train"]), "--model", str(tmp_path / "r"), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*args, "--config", str(REPO / "configs" / "default.yaml")])
    assert result.exit_code == 0, result.output
    assert seen[0].val_file == ""
    result = CliRunner().invoke(app, [*args, "--config", str(REPO / "configs" / "default.yaml"), "--val", "v.json"])
    assert seen[1].val_file == "v.json"


def test_the_pipeline_has_the_stage_only_with_a_reranker(tmp_path):
    from offline_embft import pipeline

    for name, expected in (("cpu.yaml", True), ("default.yaml", True)):
        cfg = load_config(REPO / "configs" / name).resolve()
        stamps = pipeline.write_stamps(cfg, tmp_path / name)
        names = [stage.name for stage in pipeline.stages(cfg, stamps, [])]
        assert ("train-reranker" in names) is expected
        assert names.index("train-reranker") == names.index("train") + 1
        assert cfg.evaluate.reranker == cfg.train_reranker.out_dir
    cpu = load_config(REPO / "configs" / "cpu.yaml").resolve()
    assert cpu.train_reranker.model == cpu.train.out_dir and cpu.evaluate.base_reranker == ""
    default = load_config(REPO / "configs" / "default.yaml").resolve()
    assert default.evaluate.base_reranker.endswith("bce-reranker-base_v1")

    off = load_config(REPO / "configs" / "cpu.yaml", ["reranker_model="]).resolve()
    stamps = pipeline.write_stamps(off, tmp_path / "off")
    assert "train-reranker" not in [stage.name for stage in pipeline.stages(off, stamps, [])]
    assert off.evaluate.reranker == ""


def test_download_and_doctor_treat_the_reranker_like_the_other_models(tmp_path, no_caches):
    from offline_embft import doctor
    from offline_embft.convert import download

    gpu = load_config(REPO / "configs" / "default.yaml", [f"models_dir={tmp_path / 'Models'}"]).resolve()
    assert ("reranker", "maidalun1020/bce-reranker-base_v1") in download.required_models(gpu)
    line = doctor.check_reranker(gpu)
    assert line.verdict == doctor.FAIL and "offline-embft download" in line.detail

    demo = load_config(REPO / "configs" / "cpu.yaml", [f"models_dir={tmp_path / 'Models'}"]).resolve()
    assert [role for role, _ in download.required_models(demo)] == ["embedding model"]
    line = doctor.check_reranker(demo)
    assert line.verdict == doctor.OK and "fine-tuned embedding model" in line.detail


def test_the_blend_chosen_on_validation_is_never_worse_than_either_order(trained, data, models):
    from offline_embft.core.model_files import load_sentence_transformer
    from offline_embft.retrieval import fusion, rerank

    blend = rerank.load_blend(trained)
    assert blend is not None and (trained / rerank.BLEND_FILE).is_file()
    chosen = blend.chosen_on
    # "model" is the reranker's order, "bm25" the retriever's: the choice is at least as good as the better one.
    assert chosen["fused_ndcg@10"] >= max(chosen["model_ndcg@10"], chosen["bm25_ndcg@10"])
    metrics = json.loads((trained / "train_metrics.json").read_text(encoding="utf-8"))
    assert metrics["blend"]["chosen"] == rerank.describe_blend(blend)
    # Re-applying the saved blend to the same candidates gives the ndcg@10 it was chosen with.
    cfg = _config(data, models, trained)
    candidates = train_reranker.validation_candidates(
        data["val_set"], load_sentence_transformer(str(models["retriever"])), cfg
    )
    scorer = rerank.PairScores(rerank.load_cross_encoder(trained), candidates.queries, candidates.passages)
    blended = rerank.rerank(candidates.ids, cfg.rerank_top, scorer, retriever_scores=candidates.scores, blend=blend)
    assert fusion.ndcg_at_10(blended.ids, candidates.relevant) == pytest.approx(chosen["fused_ndcg@10"], abs=1e-6)


def test_one_epoch_still_chooses_the_blend_and_blend_off_writes_none(data, models, tmp_path):
    from offline_embft.retrieval import rerank

    one = train_reranker.run(_config(data, models, tmp_path / "one", epochs=1))
    assert rerank.load_blend(one) is not None
    off = train_reranker.run(_config(data, models, tmp_path / "off", epochs=1, blend=False))
    assert rerank.load_blend(off) is None and "blend" not in json.loads((off / "train_metrics.json").read_text())


def test_a_fresh_head_starts_as_identity_and_a_trained_head_is_kept(trained, models):
    import torch

    from offline_embft.retrieval import rerank

    assert not train_reranker.has_trained_head(models["retriever"])  # an embedding model: no score head
    assert not train_reranker.has_trained_head(models["reranker"])  # a bare encoder
    assert train_reranker.has_trained_head(trained)
    model = rerank.load_cross_encoder(models["retriever"])
    assert train_reranker.start_fresh_head(model)
    hf = model[0].model
    dense = hf.bert.pooler.dense
    assert torch.equal(dense.weight, torch.eye(dense.out_features)) and not dense.bias.any()
    # The output layer gives the [CLS] state's unit-variance projection: not the 0.02-scaled default.
    assert hf.classifier.weight.std().item() > 0.1
    metrics = json.loads((trained / "train_metrics.json").read_text(encoding="utf-8"))
    assert metrics["fresh_head"] is True  # the module fixture trains from the bare tiny BERT
