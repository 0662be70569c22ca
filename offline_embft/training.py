"""Trainer settings shared by the train and train-reranker stages: the same schedule, precision, checkpointing
(best by validation, plus the last one to resume from), seeds and logging, whichever trainer runs them."""

from __future__ import annotations

from pathlib import Path
from typing import Any


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
