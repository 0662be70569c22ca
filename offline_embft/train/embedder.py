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
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from offline_embft.core.config import TrainConfig, save_config
from offline_embft.core.dataset import QADataset
from offline_embft.core.errors import UserError
from offline_embft.core.io import atomic_dir, read_json, write_json
from offline_embft.core.model_files import load_sentence_transformer
from offline_embft.train.common import (
    checkpoints_dir,
    corpus_texts,
    log_callback,
    prepare_checkpoints,
    resolve_precision,
)

logger = logging.getLogger(__name__)

EVAL_NAME = "val"
# Settings that do not change what a run computes, so changing them must not block a resume.
# Steps after training (weight ensemble, fusion) do not change the checkpoints either.
# (nproc: the world size it resolves to is fingerprinted instead.)
_NOT_FINGERPRINTED = ("out_dir", "resume", "keep_checkpoints", "nproc", "weight_ensemble", "fusion")
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
    started = time.time()
    train_data, val_data, pairs = load_inputs(cfg)

    import transformers

    from offline_embft.train.distributed import main_process_first

    precision = resolve_precision(cfg.precision)
    out_dir = Path(cfg.out_dir)
    ckpt_dir = checkpoints_dir(out_dir)
    model = load_sentence_transformer(cfg.model)
    cfg = _with_model_prompts(cfg, model)
    # Under torchrun, rank 0 decides about (and cleans) the checkpoint folder before the others look at it.
    with main_process_first():
        resume_from = prepare_checkpoints(ckpt_dir, _fingerprint(cfg), cfg.resume)
    transformers.set_seed(cfg.seed)
    if cfg.max_seq_length:
        model.max_seq_length = cfg.max_seq_length

    from offline_embft.train.vocab import choose_draw, extend_vocabulary

    vocab = extend_vocabulary(model, corpus_texts(train_data, val_data), cfg.extend_vocab)
    evaluator = build_evaluator(val_data, cfg, model) if val_data else None
    if evaluator is not None and resume_from is None:  # a resumed run's rows come from its checkpoint
        choose_draw(model, vocab, _val_ndcg(evaluator, model), cfg.vocab_draws, cfg.seed)
    # Mine with the model training starts from: after vocabulary extension it can already tell the corpus's
    # characters apart, which the base model (all [UNK]) could not.
    with main_process_first():  # rank 0 mines the hard negatives once; the other ranks read its file
        rows = _training_rows(train_data, pairs, cfg, model, ckpt_dir)
    if cfg.query_prompt or cfg.passage_prompt:
        # Saved in config_sentence_transformers.json: encode_query/encode_document (and evaluate) use them.
        model.prompts = {**model.prompts, "query": cfg.query_prompt, "document": cfg.passage_prompt}

    trainer = _build_trainer(model, rows, cfg, evaluator, ckpt_dir, precision, callbacks or [])
    logger.info(
        "training %s on %d pairs%s for %d epochs (batch %d, lr %g, %s, %s)%s",
        cfg.model,
        len(rows),
        f" with {cfg.hard_negatives} hard negatives each" if cfg.hard_negatives else "",
        cfg.epochs,
        cfg.batch_size,
        cfg.lr,
        cfg.loss,
        precision,
        f"; resuming from {resume_from}" if resume_from else "",
    )
    result = trainer.train(resume_from_checkpoint=resume_from)
    state = trainer.state
    summary = _summary(cfg, state, result.metrics, vocab.to_dict(), precision, resume_from, started, len(rows))
    summary["device"] = str(model.device)
    summary["world_size"] = trainer.args.world_size
    del summary["vocab"]["added"]
    # After training, on the validation set: WiSE-FT's α, then the BM25 fusion weight of the model that is saved.
    if cfg.weight_ensemble and evaluator is not None:
        summary["weight_ensemble"] = _weight_ensemble(model, cfg, evaluator)
    fusion_choice = None
    if cfg.fusion and val_data is not None:
        from offline_embft.generate.run import made_of_pseudo_queries

        if made_of_pseudo_queries(cfg.val_file):
            logger.warning(PSEUDO_QUERIES_FUSION)
            summary["fusion"] = {"skipped": PSEUDO_QUERIES_FUSION}
        else:
            from offline_embft.retrieval import fusion

            fusion_choice = fusion.tune_for_model(model, val_data, (cfg.query_prompt, cfg.passage_prompt))
            summary["fusion"] = {"method": fusion_choice.method, "weight": fusion_choice.weight}

    if not trainer.is_world_process_zero():
        return out_dir  # under torchrun/accelerate only the first process writes
    with atomic_dir(out_dir) as tmp:
        model.save(str(tmp))
        save_config(cfg, tmp / "train_config.yaml")
        write_json(tmp / "train_log.json", state.log_history)
        write_json(tmp / "train_metrics.json", summary)
        write_json(tmp / "vocab_extension.json", vocab.to_dict())
        if fusion_choice is not None:
            fusion_choice.save(tmp)
    if not cfg.keep_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    best = summary.get("val_metrics", {}).get("ndcg@10")
    logger.info(
        "saved %s (%s) in %.0fs",
        out_dir,
        f"best val ndcg@10 {best:.4f} at step {summary['best_step']}" if best is not None else "no validation",
        summary["wall_seconds"],
    )
    return out_dir


def _weight_ensemble(model: Any, cfg: TrainConfig, evaluator: Any) -> dict[str, Any]:
    """Mix the trained weights with the base model's (WiSE-FT), α chosen by validation ndcg@10; ``model`` changes."""
    from offline_embft.train import ensemble

    base_state = load_sentence_transformer(cfg.model, device=str(model.device)).state_dict()
    alpha, scores = ensemble.choose_alpha(model, base_state, _val_ndcg(evaluator, model))
    logger.info("weight ensemble: α=%.2f (val ndcg@10 %.4f; fine-tuned alone %.4f)", alpha, scores[alpha], scores[1.0])
    return {"alpha": alpha, "val_ndcg@10_by_alpha": {f"{a:g}": round(v, 6) for a, v in scores.items()}}


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
    if not cfg.train_file:
        raise UserError("no training dataset given; pass TRAIN.json (written by `offline-embft generate`)")
    if not cfg.out_dir:
        raise UserError("no output directory given; pass --out OUT_DIR")
    from offline_embft.train.common import load_datasets

    train_data, val_data = load_datasets(cfg)
    pairs = train_data.pairs()
    if len(pairs) < 2:
        raise UserError(f"{cfg.train_file} has {len(pairs)} (query, passage) pair; MNRL needs at least 2")
    return train_data, val_data, pairs


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

    from offline_embft.train.common import common_arguments, quiet_progress
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
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        loss=build_loss(model, cfg),
        evaluator=evaluator,
        callbacks=[log_callback(), *callbacks],
    )
    return quiet_progress(trainer)


def _val_ndcg(evaluator: Any, model: Any) -> Callable[[Any], float]:
    """A model's validation ndcg@10 by ``evaluator``: what the best checkpoint, the vocabulary draw and WiSE-FT's α
    are chosen by."""
    key = _best_metric(evaluator, model).removeprefix("eval_")  # the trainer logs it with an "eval_" prefix
    return lambda scored: evaluator(scored)[key]


def _best_metric(evaluator: Any, model: Any) -> str | None:
    if evaluator is None:
        return None
    return f"eval_{EVAL_NAME}_{model.similarity_fn_name or 'cosine'}_ndcg@10"


def _summary(
    cfg: TrainConfig,
    state: Any,
    train_metrics: dict[str, Any],
    vocab: dict[str, Any],
    precision: str,
    resume_from: str | None,
    started: float,
    rows: int,
) -> dict[str, Any]:
    """Final metrics and timings for ``train_metrics.json``."""
    from offline_embft.train.common import best_step_metrics, run_summary

    summary = run_summary(cfg, state, train_metrics, precision, resume_from, started)
    best = best_step_metrics(state, summary["best_step"], f"eval_{EVAL_NAME}_")
    # cosine_ndcg@10 → ndcg@10 (the score function is the model's own)
    val_metrics = {key.split("_", 1)[-1]: value for key, value in best.items()}
    return {"train_pairs": rows, **summary, "val_metrics": val_metrics, "vocab": vocab}


def _fingerprint(cfg: TrainConfig) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the settings that shape training and the input files' content."""
    settings = {key: value for key, value in dataclasses.asdict(cfg).items() if key not in _NOT_FINGERPRINTED}
    from offline_embft.train.common import dataset_hashes

    files = dataset_hashes(cfg)
    settings["model"] = str(Path(cfg.model).resolve())
    # Another number of processes changes the global batch and the schedule: not the same run to resume.
    settings["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
    return {"settings": settings, "files": files}
