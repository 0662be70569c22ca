"""Fine-tune a sentence-transformers model with MultipleNegativesRankingLoss, done right.

What "right" means here, each a trap users of the legacy ``model.fit`` recipe fall into (docs/train.md):

- Duplicate texts in one batch are false negatives for MNRL → ``BatchSamplers.NO_DUPLICATES``.
- Gradient accumulation adds no in-batch negatives → ``--loss cached-mnrl`` (GradCache) for big batches on small GPUs.
- A tokenizer that maps the corpus to [UNK] cannot learn it → the corpus's UNK characters become tokens
  (:mod:`offline_embft.train.vocab`).
- The last epoch is not necessarily the best → evaluate on the validation set, keep the best checkpoint by ndcg@10.
- Multi-GPU without gathering gives each device only its own negatives → ``gather_across_devices`` under
  ``torchrun`` (launched by ``offline-embft train`` itself for ``train.nproc`` > 1), with the GLOBAL batch drawn
  without duplicates and split across devices (:func:`offline_embft.train.distributed.distributed_batching`).

Outputs: ``out_dir`` is a complete sentence-transformers directory (written atomically: it is either absent, the old
model, or the new one) holding also ``train_config.yaml``, ``train_log.json`` (loss per step, eval metrics),
``train_metrics.json`` (final metrics, timings) and ``vocab_extension.json``. Checkpoints live in
``<out_dir>.checkpoints/`` while training, so a crashed run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from offline_embft.core.config import TrainConfig
from offline_embft.core.dataset import QADataset
from offline_embft.core.errors import UserError
from offline_embft.core.io import read_json, write_json
from offline_embft.core.model_files import load_sentence_transformer
from offline_embft.train.common import (  # noqa: F401  (checkpoints_dir, resolve_precision: this stage's public names)
    EVAL_NAME,
    TrainRun,
    checkpoints_dir,
    common_arguments,
    log_callback,
    resolve_precision,
)

logger = logging.getLogger(__name__)

HARD_NEGATIVES_FILE = "hard_negatives.json"
# Pseudo-queries are sentences of their passages: against the real chunks BM25 finds every one of them, against the
# masked passages (ict's training device) it finds far fewer than real questions — the weight follows the masking rate
# (README "Quality": ict's choice was 0.084 below BM25 on real questions). Real questions choose it instead.
PSEUDO_QUERIES_FUSION = (
    "no BM25 fusion weight chosen: the validation questions are ict pseudo-queries (sentences cut out of their "
    "passages), which misjudge BM25; choose it on real questions with `offline-embft evaluate --questions FILE` "
    "(real_questions/fusion_on_real_questions.json)"
)


def build_loss(model: Any, cfg: TrainConfig) -> Any:
    """MNRL or CachedMNRL (optionally inside MatryoshkaLoss), gathering negatives across devices when distributed."""
    from sentence_transformers.sentence_transformer import losses

    # Under torchrun/accelerate each process sees its own batch; gathering makes every device's passages negatives
    # for every query, so 4 GPUs x batch 32 train like batch 128 instead of four times batch 32.
    gather = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if cfg.loss == "cached-mnrl":
        loss = losses.CachedMultipleNegativesRankingLoss(
            model, mini_batch_size=cfg.mini_batch_size, gather_across_devices=gather
        )
    else:
        loss = losses.MultipleNegativesRankingLoss(model, gather_across_devices=gather)
    if cfg.matryoshka_dims:
        full = model.get_embedding_dimension()
        too_big = [d for d in cfg.matryoshka_dims if d <= 0 or d > full]
        if too_big:
            raise UserError(f"train.matryoshka_dims {too_big} must be between 1 and the model's dimension {full}")
        dims = sorted({full, *cfg.matryoshka_dims}, reverse=True)
        loss = losses.MatryoshkaLoss(model, loss, matryoshka_dims=dims)
    return loss


def build_evaluator(val: QADataset, cfg: TrainConfig, model: Any) -> Any:
    """InformationRetrievalEvaluator on the validation dataset, with the training prompts."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    return InformationRetrievalEvaluator(
        queries=val.queries,
        corpus=val.corpus,
        relevant_docs={qid: set(docs) for qid, docs in val.relevant_docs.items()},
        name=EVAL_NAME,
        main_score_function=model.similarity_fn_name or "cosine",
        query_prompt=cfg.query_prompt or None,
        corpus_prompt=cfg.passage_prompt or None,
        batch_size=max(cfg.batch_size, 32),
        show_progress_bar=False,
    )


class EmbedderRun(TrainRun):
    """The embedding model's steps in :class:`~offline_embft.train.common.TrainRun`: a sentence-transformers model
    with its own prompts, (anchor, positive[, negatives]) rows, MNRL, the IR evaluator, then WiSE-FT and the BM25
    fusion weight chosen on validation."""

    # Steps after training (weight ensemble, fusion) do not change the checkpoints; nproc: the world size it
    # resolves to is fingerprinted instead.
    not_fingerprinted = (
        *TrainRun.not_fingerprinted,
        "nproc",
        "weight_ensemble",
        "fusion",
        "general",
        "retention_margin",
    )
    distributed = True

    def check_datasets(self) -> None:
        self.pairs = self.train_data.pairs()
        if len(self.pairs) < 2:
            raise UserError(
                f"{self.cfg.train_file} has {len(self.pairs)} (query, passage) pair; MNRL needs at least 2"
            )

    def before_checkpoints(self) -> None:
        # The prompts the model declares are part of the settings the checkpoints are fingerprinted with.
        self.model = load_sentence_transformer(self.cfg.model)
        self.cfg = _with_model_prompts(self.cfg, self.model)

    def load_model(self) -> Any:
        if self.cfg.max_seq_length:
            self.model.max_seq_length = self.cfg.max_seq_length
        return self.model

    def build_evaluator(self) -> Any:
        return build_evaluator(self.val_data, self.cfg, self.model) if self.val_data else None

    def training_rows(self, ckpt_dir: Path, resume_from: str | None) -> list[dict]:
        from offline_embft.train.distributed import main_process_first
        from offline_embft.train.vocab import choose_draw

        cfg, model = self.cfg, self.model
        if self.evaluator is not None and resume_from is None:  # a resumed run's rows come from its checkpoint
            choose_draw(model, self.vocab, _val_ndcg(self.evaluator, model), cfg.vocab_draws, cfg.seed)
        # Mine with the model training starts from: after vocabulary extension it can already tell the corpus's
        # characters apart, which the base model (all [UNK]) could not.
        with main_process_first():  # rank 0 mines the hard negatives once; the other ranks read its file
            rows = _training_rows(self.train_data, self.pairs, cfg, model, ckpt_dir)
        if cfg.query_prompt or cfg.passage_prompt:
            # Saved in config_sentence_transformers.json: encode_query/encode_document (and evaluate) use them.
            model.prompts = {**model.prompts, "query": cfg.query_prompt, "document": cfg.passage_prompt}
        return rows

    def build_trainer(self, ckpt_dir: Path, precision: str) -> Any:
        return _build_trainer(self.model, self.rows, self.cfg, self.evaluator, ckpt_dir, precision, self.callbacks)

    def describe(self, precision: str) -> str:
        cfg = self.cfg
        negatives = f" with {cfg.hard_negatives} hard negatives each" if cfg.hard_negatives else ""
        return (
            f"training {cfg.model} on {len(self.rows)} pairs{negatives} for {cfg.epochs} epochs "
            f"(batch {cfg.batch_size}, lr {cfg.lr:g}, {cfg.loss}, {precision})"
        )

    def summary(self, base: dict[str, Any], val_metrics: dict[str, float], trainer: Any) -> dict[str, Any]:
        # cosine_ndcg@10 → ndcg@10 (the score function is the model's own)
        val_metrics = {key.split("_", 1)[-1]: value for key, value in val_metrics.items()}
        vocab = {k: v for k, v in self.vocab.to_dict().items() if k != "added"}
        summary = {"train_pairs": len(self.rows), **base, "val_metrics": val_metrics, "vocab": vocab}
        return {**summary, "device": str(self.model.device), "world_size": trainer.args.world_size}

    def finish(self, summary: dict[str, Any]) -> None:
        """After training, on the validation set: WiSE-FT's α, then the BM25 fusion weight of the model saved."""
        cfg, model, val_data = self.cfg, self.model, self.val_data
        if cfg.weight_ensemble and self.evaluator is not None:
            summary["weight_ensemble"] = _weight_ensemble(model, cfg, self.evaluator)
        self.fusion_choice = None
        if cfg.fusion and val_data is not None:
            from offline_embft.core.dataset import made_of_pseudo_queries

            if made_of_pseudo_queries(cfg.val_file):
                logger.warning(PSEUDO_QUERIES_FUSION)
                summary["fusion"] = {"skipped": PSEUDO_QUERIES_FUSION}
            else:
                from offline_embft.retrieval import fusion

                choice = fusion.tune_for_model(model, val_data, (cfg.query_prompt, cfg.passage_prompt))
                summary["fusion"] = {"method": choice.method, "weight": choice.weight}
                self.fusion_choice = choice

    def save_extra(self, out_dir: Path) -> None:
        if self.fusion_choice is not None:
            self.fusion_choice.save(out_dir)


def run(cfg: TrainConfig, callbacks: list[Any] | None = None) -> Path:
    """Fine-tune ``cfg.model`` on ``cfg.train_file`` and write the best model to ``cfg.out_dir``.

    Args:
        cfg: the resolved training config.
        callbacks: extra ``transformers.TrainerCallback`` objects (tests and benchmarks hook in here).

    Returns:
        The output model directory.

    Raises:
        UserError: bad dataset, model directory, or settings; checkpoints from a different run.
    """
    return EmbedderRun(cfg, callbacks).run()


def _weight_ensemble(model: Any, cfg: TrainConfig, evaluator: Any) -> dict[str, Any]:
    """Mix the trained weights with the base model's (WiSE-FT), α chosen by validation ndcg@10 — with general sets
    (``cfg.general``), among the αs losing at most ``cfg.retention_margin`` of their mean ndcg@10; ``model``
    changes."""
    from offline_embft.core.beir import load_set
    from offline_embft.train import ensemble

    base_state = load_sentence_transformer(cfg.model, device=str(model.device)).state_dict()
    general = [_val_ndcg(build_evaluator(load_set(path), cfg, model), model) for path in cfg.general]

    def general_score(scored: Any) -> float:
        return sum(score(scored) for score in general) / len(general)

    choice = ensemble.choose_merge(
        model, base_state, _val_ndcg(evaluator, model), general_score if general else None, cfg.retention_margin
    )
    logger.info("%s", choice.describe())
    return choice.to_dict()


def _with_model_prompts(cfg: TrainConfig, model: Any) -> TrainConfig:
    """The config with the prompts the model itself declares, where the config sets none.

    A model saved with prompts (config_sentence_transformers.json, e.g. an instruction-tuned BGE/E5 converted with
    its instruction) is used with them at inference, so it must be trained with them too. Explicit prompts win.
    """
    prompts = getattr(model, "prompts", None) or {}
    query = cfg.query_prompt or prompts.get("query", "")
    passage = cfg.passage_prompt or prompts.get("document", "") or prompts.get("passage", "")
    if (query, passage) != (cfg.query_prompt, cfg.passage_prompt):
        logger.info("using the model's own prompts: query %r, passage %r", query, passage)
    return dataclasses.replace(cfg, query_prompt=query, passage_prompt=passage)


def load_inputs(cfg: TrainConfig) -> tuple[QADataset, QADataset | None, list[tuple[str, str]]]:
    """The training and validation datasets and the training pairs, checked (cheap: no model is loaded).

    Raises:
        UserError: a dataset is missing or unreadable, no output directory, fewer than 2 pairs.
    """
    checked = EmbedderRun(cfg)
    checked.load_inputs()
    return checked.train_data, checked.val_data, checked.pairs


def _training_rows(
    train: QADataset, pairs: list[tuple[str, str]], cfg: TrainConfig, model: Any, ckpt_dir: Path
) -> list[dict]:
    """(anchor, positive[, negative_1..N]) rows for the trainer.

    Mined rows are kept in the checkpoint folder (whose fingerprint pins the data and settings): the other ranks of
    a distributed run, and a resumed run, read them instead of mining again.
    """
    if not cfg.hard_negatives:
        return [{"anchor": query, "positive": passage} for query, passage in pairs]
    saved = ckpt_dir / HARD_NEGATIVES_FILE
    if saved.is_file():
        return read_json(saved)
    from offline_embft.train import negatives

    rows = negatives.mine(
        train,
        cfg.hard_negatives,
        source=cfg.hard_negative_source,
        model=model,
        query_prompt=cfg.query_prompt,
        passage_prompt=cfg.passage_prompt,
        seed=cfg.seed,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        write_json(saved, rows)
    return rows


def _build_trainer(
    model: Any,
    rows: list[dict],
    cfg: TrainConfig,
    evaluator: Any,
    ckpt_dir: Path,
    precision: str,
    callbacks: list[Any],
) -> Any:
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    from offline_embft.train.distributed import distributed_batching, world_size

    columns = list(rows[0])
    dataset = Dataset.from_dict({column: [row[column] for row in rows] for column in columns})
    prompts = {
        column: cfg.query_prompt if column == "anchor" else cfg.passage_prompt
        for column in columns
        if (cfg.query_prompt if column == "anchor" else cfg.passage_prompt)
    }
    args = SentenceTransformerTrainingArguments(
        **common_arguments(cfg, ckpt_dir, precision, _best_metric(evaluator, model)),
        **distributed_batching(cfg.batch_size, world_size()),
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        prompts=prompts or None,
        # Without CUDA, accelerate treats several torchrun processes as one each unless told it is a CPU run (gloo).
        use_cpu=not torch.cuda.is_available(),
    )
    return SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        loss=build_loss(model, cfg),
        evaluator=evaluator,
        callbacks=[log_callback(), *callbacks],
    )


def _val_ndcg(evaluator: Any, model: Any) -> Callable[[Any], float]:
    """A model's validation ndcg@10 by ``evaluator``: what the best checkpoint, the vocabulary draw and WiSE-FT's α
    are chosen by."""
    key = _best_metric(evaluator, model).removeprefix("eval_")  # the trainer logs it with an "eval_" prefix
    return lambda scored: evaluator(scored)[key]


def _best_metric(evaluator: Any, model: Any) -> str | None:
    if evaluator is None:
        return None
    return f"eval_{EVAL_NAME}_{model.similarity_fn_name or 'cosine'}_ndcg@10"
