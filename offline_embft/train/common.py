"""Trainer settings shared by the train and train-reranker stages: the same schedule, precision, checkpointing
(best by validation, plus the last one to resume from), seeds and logging, whichever trainer runs them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offline_embft.core.errors import UserError
from offline_embft.core.io import read_json, write_json

if TYPE_CHECKING:
    from offline_embft.core.dataset import QADataset

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "run_fingerprint.json"


def common_arguments(cfg: Any, ckpt_dir: Path, precision: str, best_metric: str | None) -> dict[str, Any]:
    """Keyword arguments for ``SentenceTransformerTrainingArguments`` / ``CrossEncoderTrainingArguments``.

    Args:
        cfg: A stage config with epochs, batch_size, lr, warmup_ratio, weight_decay, eval_steps and seed.
        ckpt_dir: Where checkpoints go.
        precision: ``bf16``, ``fp16`` or ``fp32``.
        best_metric: The evaluator metric that picks the best checkpoint (None: no validation, keep the last).

    Returns:
        The shared arguments; the caller adds its batch sampler, prompts and device settings.
    """
    import torch

    strategy = "steps" if cfg.eval_steps else "epoch"
    validating = best_metric is not None
    return {
        "output_dir": str(ckpt_dir),
        "num_train_epochs": cfg.epochs,
        "per_device_eval_batch_size": cfg.batch_size,
        "learning_rate": cfg.lr,
        # transformers 5: a float below 1 is a share of the total steps (5.0.0 training_args.py:2051,
        # get_warmup_steps); 4.51 rejects a float (training_args.py:1866), hence the floor in pyproject.toml.
        "warmup_steps": cfg.warmup_ratio,
        "weight_decay": cfg.weight_decay,
        "lr_scheduler_type": "linear",
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "eval_strategy": strategy if validating else "no",
        "eval_steps": cfg.eval_steps or None,
        "save_strategy": strategy,
        "save_steps": cfg.eval_steps or None,
        # The best checkpoint and the last one (to resume from) are all that need to stay on disk.
        "save_total_limit": 2,
        "load_best_model_at_end": validating,
        "metric_for_best_model": best_metric,
        "greater_is_better": True,
        "logging_steps": 1,
        "logging_first_step": True,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "report_to": "none",
        "dataloader_pin_memory": torch.cuda.is_available(),
    }


def quiet_progress(trainer: Any) -> Any:
    """Keep the progress bar but not its dump of every step's log dict: logging_steps=1 keeps the loss of every step
    for train_log.json, which would flood the terminal; evaluations get one readable line from the log callback."""
    from transformers.trainer_callback import ProgressCallback

    class _QuietProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(_QuietProgress)
    return trainer


def run_summary(
    cfg: Any, state: Any, train_metrics: dict[str, Any], precision: str, resume_from: str | None, started: float
) -> dict[str, Any]:
    """The timings and counts ``train_metrics.json`` reports for every trainer (the stage adds its own keys).

    Returns:
        epochs, steps, the best step (None without validation), runtime, throughput, loss, memory, precision and
        where the run resumed from.
    """
    best = state.best_model_checkpoint
    return {
        "epochs": cfg.epochs,
        "global_step": state.global_step,
        "best_step": int(best.rsplit("-", 1)[-1]) if best else None,
        "train_runtime_seconds": round(train_metrics.get("train_runtime", 0.0), 2),
        "train_samples_per_second": round(train_metrics.get("train_samples_per_second", 0.0), 3),
        "train_loss": train_metrics.get("train_loss"),
        "wall_seconds": round(time.time() - started, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "precision": precision,
        "resumed_from": resume_from,
        "resumed_from_step": int(resume_from.rsplit("-", 1)[-1]) if resume_from else None,
    }


def best_step_metrics(state: Any, best_step: int | None, prefix: str) -> dict[str, float]:
    """The validation metrics logged at the best step, without ``prefix`` (``eval_val_``); empty without validation."""
    for entry in state.log_history:
        if entry.get("step") == best_step and any(key.startswith(prefix) for key in entry):
            return {key[len(prefix) :]: value for key, value in entry.items() if key.startswith(prefix)}
    return {}


def dataset_hashes(cfg: Any) -> dict[str, str]:
    """SHA-256 of the training and validation files: a checkpoint resumes only with the same data."""
    files = {}
    for key in ("train_file", "val_file"):
        path = getattr(cfg, key)
        if path and Path(path).is_file():
            files[key] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return files


def load_datasets(cfg: Any) -> tuple[Any, Any]:
    """The training set and the validation set (None without one), read before any model loads.

    Raises:
        UserError: a dataset is missing or malformed.
    """
    from offline_embft.core.dataset import QADataset

    train_data = QADataset.load(cfg.train_file)
    if not cfg.val_file:
        logger.info("no validation dataset: no evaluation during training, the last checkpoint is saved")
        return train_data, None
    if not Path(cfg.val_file).is_file():
        raise UserError(
            f"validation dataset {cfg.val_file} not found; pass an existing --val FILE, or give TRAIN.json "
            "without --val to train without validation"
        )
    return train_data, QADataset.load(cfg.val_file)


def checkpoints_dir(out_dir: str | Path) -> Path:
    """Where the checkpoints of a run writing ``out_dir`` live: ``<out_dir>.checkpoints`` beside it."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".checkpoints")


def resolve_precision(precision: str) -> str:
    """auto → bf16 on a GPU that computes it natively (Ampere and newer), fp16 on other GPUs (T4, V100), fp32 on CPU.

    A T4 reports bf16 as supported because it can emulate it, slowly: :func:`gpu_compat.bf16_native` asks for
    hardware support only.
    """
    import torch

    from offline_embft.core.gpu_compat import bf16_native

    cuda = torch.cuda.is_available()
    if precision == "auto":
        if not cuda:
            return "fp32"
        return "bf16" if bf16_native() else "fp16"
    if precision == "fp16" and not cuda:
        raise UserError("train.precision=fp16 needs a CUDA GPU; use auto or fp32 on this machine")
    return precision


def corpus_texts(train: QADataset, val: QADataset | None) -> list[str]:
    """Every text the model will read: the vocabulary must cover the user's whole corpus, validation included.

    Only characters are taken from the validation set (no labels), exactly what a user's deployment embeds anyway.
    """
    texts = [*train.queries.values(), *train.corpus.values()]
    if val is not None:
        texts += [*val.queries.values(), *val.corpus.values()]
    return texts


def prepare_checkpoints(ckpt_dir: Path, fingerprint: dict[str, Any], resume: bool) -> str | None:
    """The checkpoint to resume from (None: start fresh), after checking it belongs to this very run."""
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    marker = ckpt_dir / FINGERPRINT_FILE
    if last and resume:
        saved = read_json(marker) if marker.is_file() else None
        if saved != json.loads(json.dumps(fingerprint)):
            raise UserError(
                f"checkpoints in {ckpt_dir} come from a run with other settings or data; "
                "delete that folder, or pass --set train.resume=false to start over"
            )
        return last
    if int(os.environ.get("RANK", "0")) != 0:
        return None  # in a distributed run the first process owns the folder
    if ckpt_dir.exists():
        logger.info("starting over: removing old checkpoints in %s", ckpt_dir)
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True)
    write_json(marker, fingerprint)
    return None


def log_callback() -> Any:
    """Our log line for each evaluation (the trainer's own progress bar shows the steps)."""
    from transformers import TrainerCallback

    class LogCallback(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            key = args.metric_for_best_model
            if metrics and key in metrics:
                logger.info("step %d (epoch %.2f): val ndcg@10 %.4f", state.global_step, state.epoch, metrics[key])

    return LogCallback()
