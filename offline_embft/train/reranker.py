"""Fine-tune the second stage: a cross-encoder reranker, from the same questions the embedding model trained on.

BCE ships bce-embedding with bce-reranker and recommends both; tuning only the first stage leaves the second generic.
Each training question gets its positive passage(s) and hard negatives mined by the *fine-tuned* embedding model
(:func:`offline_embft.train.negatives.mine`: sentence-transformers' ``mine_hard_negatives`` with the NV-Retriever
margin,
positives, same-text copies and near-duplicates never used as negatives) — exactly the passages the reranker will
have to sort out behind that retriever. Training is sentence-transformers' ``CrossEncoderTrainer`` with one of its
ranking losses (``train_reranker.loss``; README "Measured" has the comparison that chose the default):

- ``bce``: BinaryCrossEntropyLoss over (question, passage, 1/0) pairs, positives weighted by the negatives' count;
- ``mnrl``: MultipleNegativesRankingLoss, the positive picked among its hard negatives and in-batch passages;
- ``lambda`` / ``listnet``: listwise LambdaLoss (NDCG-weighted) / ListNetLoss over (question, [passages], labels).

Validation (best checkpoint): ``CrossEncoderRerankingEvaluator`` re-ordering the retriever's top ``rerank_top`` for
each validation question — the same "retriever → reranker" ndcg@10 that ``evaluate`` reports.

Outputs, as :mod:`offline_embft.train.embedder`: ``out_dir`` is a complete CrossEncoder directory written atomically,
with
``train_config.yaml``, ``train_log.json``, ``train_metrics.json`` and ``vocab_extension.json``; checkpoints live in
``<out_dir>.checkpoints/`` while training, so a crashed run resumes.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from offline_embft.core.config import TrainRerankerConfig
from offline_embft.core.dataset import QADataset
from offline_embft.core.errors import UserError
from offline_embft.train.common import (  # noqa: F401  (checkpoints_dir: this stage's public name)
    EVAL_NAME,
    TrainRun,
    checkpoints_dir,
    common_arguments,
    log_callback,
)

logger = logging.getLogger(__name__)

BEST_METRIC = f"eval_{EVAL_NAME}_ndcg@10"
# In-batch passages MultipleNegativesRankingLoss adds to each question's own hard negatives.
MNRL_IN_BATCH_NEGATIVES = 4


@dataclass
class RerankExample:
    """One training question with the passages the reranker must put above (positives) and below (negatives)."""

    query: str
    positives: list[str]
    negatives: list[str]


def build_examples(
    dataset: QADataset, cfg: TrainRerankerConfig, retriever: Any = None, seed: int | None = None
) -> list[RerankExample]:
    """One example per question: its positive passages and ``cfg.negatives`` hard negatives.

    Negatives come from :func:`offline_embft.train.negatives.mine` (the retriever's nearest passages that are not the
    answer, a positive-aware margin, positives' copies and near-duplicates excluded); they are unique per question
    and never equal to the text of one of its positives.
    """
    from offline_embft.train import negatives

    if cfg.negative_source in ("model", "both") and retriever is None:
        raise UserError(
            f"train_reranker.negative_source={cfg.negative_source} needs the fine-tuned embedding model; pass "
            "--retriever MODEL_DIR (the pipeline passes train's output) or --set train_reranker.negative_source=bm25"
        )
    rows = negatives.mine(
        dataset,
        cfg.negatives,
        source=cfg.negative_source,
        model=retriever,
        query_prompt=cfg.query_prompt,
        passage_prompt=cfg.passage_prompt,
        seed=cfg.seed if seed is None else seed,
    )
    # mine() gives one row per (question, positive) with the question's negatives repeated: one example per question.
    by_query: dict[str, RerankExample] = {}
    for row in rows:
        example = by_query.setdefault(row["anchor"], RerankExample(row["anchor"], [], []))
        if row["positive"] not in example.positives:
            example.positives.append(row["positive"])
        for key in sorted((k for k in row if k.startswith("negative_")), key=lambda k: int(k.split("_")[1])):
            if row[key] not in example.negatives:
                example.negatives.append(row[key])
    examples = list(by_query.values())
    for example in examples:  # mine() already guarantees this; a bad negative would teach the opposite of the truth
        example.negatives = [text for text in example.negatives if text not in example.positives]
    return examples


def has_trained_head(model_dir: str | Path) -> bool:
    """Whether the checkpoint is already a sequence classifier (a reranker), not an encoder or embedding model."""
    config = Path(model_dir) / "config.json"
    try:
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError):
        return False
    return any(name.endswith("ForSequenceClassification") for name in architectures)


def start_fresh_head(model: Any) -> bool:
    """Initialise a new one-score head so that training reaches the encoder (dense = identity, output ~ 1/sqrt(h)).

    transformers draws a new head's weights with std 0.02, and BERT's pooler (dense + tanh on [CLS]) comes from
    pre-training or is new as well; the score's gradient reaches the encoder scaled by both (about 1e-4), so a few
    hundred CPU steps barely move it (the CPU demo's loss stayed flat; README "Measured": reranker). With the dense
    layer as identity and the output layer scaled to unit variance, the encoder's [CLS] state reaches the score
    unchanged: on 100 statute questions, 75 steps took the LambdaLoss from 2.76 to 1.33 where the default head
    stayed at 2.29.

    Returns:
        True when the head was re-initialised (BERT-style pooler + classifier, or a RoBERTa-style classifier with
        dense and out_proj); False for an architecture whose head this does not know (left as transformers made it).
    """
    import torch

    hf_model = model[0].model
    base = getattr(hf_model, "base_model", None)
    classifier = getattr(hf_model, "classifier", None)
    pooler = getattr(getattr(base, "pooler", None), "dense", None)
    if isinstance(classifier, torch.nn.Linear) and isinstance(pooler, torch.nn.Linear):
        dense, output = pooler, classifier
    elif isinstance(getattr(classifier, "dense", None), torch.nn.Linear) and isinstance(
        getattr(classifier, "out_proj", None), torch.nn.Linear
    ):
        dense, output = classifier.dense, classifier.out_proj
    else:
        logger.warning("unknown reranker head in %s: keeping transformers' initialisation", type(hf_model).__name__)
        return False
    with torch.no_grad():
        dense.weight.copy_(torch.eye(dense.out_features, dense.in_features))
        dense.bias.zero_()
        output.weight.normal_(0.0, dense.out_features**-0.5)
        output.bias.zero_()
    logger.info("new one-score head: identity %s, output scaled to unit variance", type(dense).__name__)
    return True


def training_dataset(examples: list[RerankExample], loss: str) -> Any:
    """The ``datasets.Dataset`` each loss expects (columns per the sentence-transformers loss tables)."""
    from datasets import Dataset

    if loss == "bce":
        queries, passages, labels = [], [], []
        for example in examples:
            for text, label in [(p, 1.0) for p in example.positives] + [(n, 0.0) for n in example.negatives]:
                queries.append(example.query)
                passages.append(text)
                labels.append(label)
        return Dataset.from_dict({"query": queries, "passage": passages, "label": labels})
    if loss == "mnrl":
        width = min(len(example.negatives) for example in examples)
        columns: dict[str, list[str]] = {"query": [], "positive": []}
        columns.update({f"negative_{i}": [] for i in range(1, width + 1)})
        for example in examples:
            for positive in example.positives:
                columns["query"].append(example.query)
                columns["positive"].append(positive)
                for i in range(1, width + 1):
                    columns[f"negative_{i}"].append(example.negatives[i - 1])
        return Dataset.from_dict(columns)
    return Dataset.from_dict(
        {
            "query": [e.query for e in examples],
            "docs": [e.positives + e.negatives for e in examples],
            "labels": [[1] * len(e.positives) + [0] * len(e.negatives) for e in examples],
        }
    )


@dataclass
class Candidates:
    """Each validation question with the retriever's top ``rerank_top`` passages: what the reranker will re-order."""

    queries: list[str]
    passages: list[str]
    relevant: list[set[int]]  # per question, positions in ``passages`` that answer it
    ids: Any  # (questions, top) passage positions, the retriever's order
    scores: Any  # (questions, top) the retriever's scores

    def samples(self) -> list[dict[str, Any]]:
        """``CrossEncoderRerankingEvaluator`` samples."""
        return [
            {
                "query": query,
                "positive": [self.passages[i] for i in sorted(right)],
                "documents": [self.passages[i] for i in row],
            }
            for query, right, row in zip(self.queries, self.relevant, self.ids, strict=True)
        ]


def validation_candidates(dataset: QADataset, retriever: Any, cfg: TrainRerankerConfig) -> Candidates:
    """The retriever's top ``rerank_top`` passages for each validation question.

    Without a retriever, BM25 finds the candidates (the same index as evaluation's baseline).
    """
    import numpy as np

    from offline_embft.retrieval.fusion import LabelledSet, bm25_ranking, dense_ranking

    data = LabelledSet.from_dataset(dataset)
    top = min(cfg.rerank_top, len(data.passages))
    if retriever is not None:
        ids, scores = dense_ranking(retriever, data, (cfg.query_prompt, cfg.passage_prompt), top)
    else:
        ids, scores = bm25_ranking(data, top)
    return Candidates(data.queries, data.passages, data.relevant, np.asarray(ids), np.asarray(scores))


def choose_blend(model: Any, candidates: Candidates, cfg: TrainRerankerConfig) -> Any:
    """How much of the retriever's order to keep, chosen on validation (see :mod:`offline_embft.retrieval.rerank`).

    The reranker's order of each question's candidates and the retriever's are fused with every weight
    :func:`offline_embft.retrieval.fusion.tune` tries, each order alone included, so the choice is never worse than
    either
    on the validation questions.
    """
    from offline_embft.retrieval import rerank
    from offline_embft.retrieval.fusion import tune

    scorer = rerank.PairScores(model, candidates.queries, candidates.passages, max(cfg.batch_size, 32))
    top = candidates.ids.shape[1]
    reranked = rerank.rerank(candidates.ids, top, scorer)
    blend = tune(
        (reranked.ids, reranked.scores),
        (candidates.ids, candidates.scores),
        candidates.relevant,
        len(candidates.passages),
        depth=top,
    )
    chosen = blend.chosen_on
    logger.info(
        "blend chosen on %d validation questions: %s (ndcg@10 %.4f; reranker alone %.4f, retriever %.4f)",
        chosen["queries"],
        rerank.describe_blend(blend),
        chosen["fused_ndcg@10"],
        chosen["model_ndcg@10"],
        chosen["bm25_ndcg@10"],
    )
    return blend


def build_loss(model: Any, cfg: TrainRerankerConfig) -> Any:
    """The sentence-transformers cross-encoder loss named by ``cfg.loss``."""
    import torch
    from sentence_transformers.cross_encoder import losses

    if cfg.loss == "bce":
        # One positive against N negatives: weight positives by N so both classes pull equally.
        return losses.BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(float(cfg.negatives)))
    if cfg.loss == "mnrl":
        return losses.MultipleNegativesRankingLoss(model, num_negatives=MNRL_IN_BATCH_NEGATIVES)
    if cfg.loss == "lambda":
        return losses.LambdaLoss(model)
    return losses.ListNetLoss(model)


class RerankerRun(TrainRun):
    """The reranker's steps in :class:`~offline_embft.train.common.TrainRun`: negatives mined by the retriever (which
    is then freed), a cross-encoder with a fresh one-score head, the reranking evaluator, then the blend with the
    retriever's order chosen on validation."""

    # A retrained retriever mines other negatives: both models' weights are part of the run.
    weighed = ("model", "retriever")

    def check_settings(self) -> None:
        if not self.cfg.model:
            raise UserError("no reranker given; pass --model RERANKER_DIR or set reranker_model in the config")
        from offline_embft.retrieval import rerank

        rerank.check_reranker_dir(self.cfg.model)
        if not self.cfg.retriever and self.cfg.negative_source != "bm25":
            # What train_reranker.retriever's help promises: no retriever, BM25 only. The saved config says so too.
            logger.warning(
                "no retriever (train_reranker.retriever is empty): negatives and validation candidates come from "
                "BM25 only, not from %s; pass --retriever MODEL_DIR (the fine-tuned embedding model) for the model's",
                self.cfg.negative_source,
            )
            self.cfg = replace(self.cfg, negative_source="bm25")

    def check_datasets(self) -> None:
        cfg, corpus = self.cfg, self.train_data.corpus
        if len(corpus) <= cfg.negatives:
            raise UserError(
                f"{cfg.train_file} has {len(corpus)} passages, too few for {cfg.negatives} negatives per "
                "question; lower --set train_reranker.negatives"
            )

    def load_model(self) -> Any:
        """Mine the negatives and the validation candidates with the retriever, free it, load the cross-encoder."""
        from offline_embft.retrieval import rerank

        cfg, val_data = self.cfg, self.val_data
        # One epoch has no checkpoint to choose from: validation only chooses the blend, after training.
        self.choose_checkpoint = val_data is not None and (cfg.epochs > 1 or cfg.eval_steps > 0)
        validating = self.choose_checkpoint or (val_data is not None and cfg.blend)
        mine_started = time.perf_counter()
        retriever = _load_retriever(cfg, validating=validating)
        self.examples = build_examples(self.train_data, cfg, retriever)
        self.candidates = validation_candidates(val_data, retriever, cfg) if validating else None
        self.mine_seconds = time.perf_counter() - mine_started
        del retriever
        gc.collect()
        model = rerank.load_cross_encoder(cfg.model, cfg.max_length or None)
        self.fresh_head = not has_trained_head(cfg.model) and start_fresh_head(model)
        return model

    def build_evaluator(self) -> Any:
        return _evaluator(self.candidates.samples(), self.cfg) if self.choose_checkpoint else None

    def training_rows(self, ckpt_dir: Path, resume_from: str | None) -> Any:
        return training_dataset(self.examples, self.cfg.loss)

    def build_trainer(self, ckpt_dir: Path, precision: str) -> Any:
        return _build_trainer(self.model, self.rows, self.cfg, self.evaluator, ckpt_dir, precision, self.callbacks)

    def describe(self, precision: str) -> str:
        cfg = self.cfg
        return (
            f"training reranker {cfg.model} on {len(self.examples)} questions ({len(self.rows)} training rows, "
            f"{cfg.negatives} negatives each, loss {cfg.loss}) for {cfg.epochs} epochs "
            f"(batch {cfg.batch_size}, lr {cfg.lr:g}, {precision})"
        )

    def summary(self, base: dict[str, Any], val_metrics: dict[str, float], trainer: Any) -> dict[str, Any]:
        cfg = self.cfg
        extra = {"train_questions": len(self.examples), "train_rows": len(self.rows), "loss": cfg.loss}
        return {
            **extra,
            "negatives": cfg.negatives,
            **base,
            "val_metrics": val_metrics,
            "mining_seconds": round(self.mine_seconds, 2),
            "device": str(self.model.device),
            "fresh_head": self.fresh_head,
            "vocab": {k: v for k, v in self.vocab.to_dict().items() if k != "added"},
        }

    def finish(self, summary: dict[str, Any]) -> None:
        """The blend of the reranker's order with the retriever's, chosen on the validation candidates."""
        from offline_embft.retrieval import rerank

        self.blend = None
        if self.candidates is not None and self.cfg.blend:
            self.blend = choose_blend(self.model, self.candidates, self.cfg)
            summary["blend"] = {"chosen": rerank.describe_blend(self.blend), **self.blend.chosen_on}

    def save_extra(self, out_dir: Path) -> None:
        from offline_embft.retrieval import rerank

        if self.blend is not None:
            self.blend.save(out_dir, rerank.BLEND_FILE)

    def saved_note(self, summary: dict[str, Any]) -> str:
        best = summary["val_metrics"].get("ndcg@10")
        chosen = [f"best val rerank ndcg@10 {best:.4f} at step {summary['best_step']}"] if best is not None else []
        chosen += [f"blend: {summary['blend']['chosen']}"] if "blend" in summary else []
        return "; ".join(chosen) or "no validation"


def run(cfg: TrainRerankerConfig, callbacks: list[Any] | None = None) -> Path:
    """Fine-tune ``cfg.model`` as a reranker on ``cfg.train_file``; write the best model to ``cfg.out_dir``.

    Args:
        cfg: the resolved reranker training config.
        callbacks: extra ``transformers.TrainerCallback`` objects (tests and benchmarks hook in here).

    Returns:
        The output CrossEncoder directory.

    Raises:
        UserError: bad dataset, model directory, or settings; checkpoints from a different run.
    """
    return RerankerRun(cfg, callbacks).run()


def _load_retriever(cfg: TrainRerankerConfig, validating: bool) -> Any:
    """The embedding model that mines negatives and validation candidates (None when only BM25 is asked for, or
    there is no retriever: :meth:`RerankerRun.check_settings` has then set the negatives' source to BM25)."""
    if not cfg.retriever or (cfg.negative_source == "bm25" and not validating):
        return None
    from offline_embft.core.model_files import load_sentence_transformer

    return load_sentence_transformer(cfg.retriever)


def _evaluator(samples: list[dict[str, Any]], cfg: TrainRerankerConfig) -> Any:
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    # always_rerank_positives=False: a positive the retriever missed cannot be saved by the reranker, as in evaluate.
    return CrossEncoderRerankingEvaluator(
        samples,
        at_k=10,
        always_rerank_positives=False,
        name=EVAL_NAME,
        batch_size=max(cfg.batch_size, 32),
        write_csv=False,
    )


def _build_trainer(
    model: Any,
    dataset: Any,
    cfg: TrainRerankerConfig,
    evaluator: Any,
    ckpt_dir: Path,
    precision: str,
    callbacks: list[Any],
) -> Any:
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    args = CrossEncoderTrainingArguments(
        **common_arguments(cfg, ckpt_dir, precision, BEST_METRIC if evaluator is not None else None),
        per_device_train_batch_size=cfg.batch_size,
        # In-batch passages are negatives for MNRL: a duplicate would be a false one.
        batch_sampler=BatchSamplers.NO_DUPLICATES if cfg.loss == "mnrl" else BatchSamplers.BATCH_SAMPLER,
        dataloader_drop_last=False,
    )
    return CrossEncoderTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        loss=build_loss(model, cfg),
        evaluator=evaluator,
        callbacks=[log_callback(), *callbacks],
    )
