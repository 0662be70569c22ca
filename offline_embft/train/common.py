"""The one run skeleton of the train and train-reranker stages, and the trainer settings they share.

:class:`TrainRun` takes the steps every training run takes, once: check the inputs, load the datasets, resolve the
precision, prepare (or resume) the checkpoints, seed, extend the vocabulary, build the trainer, train, summarise,
save the model directory atomically, remove the checkpoints and log. The embedding stage
(:mod:`offline_embft.train.embedder`) and the reranker stage (:mod:`offline_embft.train.reranker`) fill in only
their own steps: model loading, training rows (negatives), evaluator, loss and trainer — the layout of
FlagEmbedding's ``AbsRunner`` and of sentence-transformers' trainers. The same schedule, precision, checkpointing
(best by validation, plus the last one to resume from), seeds and logging hold whichever trainer runs them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import resource
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offline_embft.core.config import save_config
from offline_embft.core.errors import UserError
from offline_embft.core.io import atomic_dir, read_json, write_json

if TYPE_CHECKING:
    from offline_embft.core.dataset import QADataset

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "run_fingerprint.json"
EVAL_NAME = "val"  # the evaluator's name: its metrics are logged as eval_val_*


class TrainRun:
    """One training run: :meth:`run` takes the shared steps, the stage's subclass fills in its own.

    A subclass sets the class attributes and overrides the hooks below :meth:`run`; state the steps share lives on
    the instance (``cfg``, ``train_data``, ``val_data``, ``model``, ``vocab``, ``evaluator``, ``rows``).

    Attributes:
        not_fingerprinted: Config fields that do not change what a run computes: changing them must not block a
            resume.
        weighed: Model paths in the config (besides ``model``) whose weights are fingerprinted too, by size and time.
        distributed: The stage runs under torchrun: the world size is fingerprinted and rank 0 goes first.
    """

    not_fingerprinted: tuple[str, ...] = ("out_dir", "resume", "keep_checkpoints")
    weighed: tuple[str, ...] = ()
    distributed: bool = False

    def __init__(self, cfg: Any, callbacks: list[Any] | None = None) -> None:
        self.cfg = cfg
        self.callbacks = callbacks or []
        self.train_data: QADataset | None = None
        self.val_data: QADataset | None = None
        self.model: Any = None
        self.vocab: Any = None
        self.evaluator: Any = None
        self.rows: Any = None

    def run(self) -> Path:
        """Train ``cfg.model`` on ``cfg.train_file`` and write the best model to ``cfg.out_dir``.

        Returns:
            The output model directory.

        Raises:
            UserError: bad dataset, model directory, or settings; checkpoints from a different run.
        """
        import transformers

        from offline_embft.train.distributed import main_process_first
        from offline_embft.train.vocab import extend_vocabulary

        started = time.time()
        log = logging.getLogger(type(self).__module__)  # the stage's lines under the stage's name, as users know them
        self.load_inputs()
        precision = resolve_precision(self.cfg.precision)
        out_dir = Path(self.cfg.out_dir)
        ckpt_dir = checkpoints_dir(out_dir)
        self.before_checkpoints()
        # Under torchrun, rank 0 decides about (and cleans) the checkpoint folder before the others look at it.
        with main_process_first():
            resume_from = prepare_checkpoints(ckpt_dir, self.fingerprint(), self.cfg.resume)
        transformers.set_seed(self.cfg.seed)
        self.model = self.load_model()
        texts = corpus_texts(self.train_data, self.val_data)
        self.vocab = extend_vocabulary(self.model, texts, self.cfg.extend_vocab)
        self.evaluator = self.build_evaluator()
        self.rows = self.training_rows(ckpt_dir, resume_from)
        trainer = quiet_progress(self.build_trainer(ckpt_dir, precision))
        resuming = f"; resuming from {resume_from}" if resume_from else ""
        log.info("%s%s", self.describe(precision), resuming)
        result = trainer.train(resume_from_checkpoint=resume_from)
        state = trainer.state
        base = run_summary(self.cfg, state, result.metrics, precision, resume_from, started)
        val_metrics = best_step_metrics(state, base["best_step"], f"eval_{EVAL_NAME}_")
        summary = self.summary(base, val_metrics, trainer)
        self.finish(summary)
        if not trainer.is_world_process_zero():
            return out_dir  # under torchrun/accelerate only the first process writes
        with atomic_dir(out_dir) as tmp:
            self.model.save(str(tmp))
            self.save_extra(tmp)
            save_config(self.cfg, tmp / "train_config.yaml")
            write_json(tmp / "train_log.json", state.log_history)
            write_json(tmp / "train_metrics.json", summary)
            write_json(tmp / "vocab_extension.json", self.vocab.to_dict())
        if not self.cfg.keep_checkpoints:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        log.info("saved %s (%s) in %.0fs", out_dir, self.saved_note(summary), summary["wall_seconds"])
        return out_dir

    def load_inputs(self) -> None:
        """Check the settings and read the datasets, before any model loads (cheap: the CLI calls it before it
        launches torchrun, so bad input is one line, not the same error from every process).

        Raises:
            UserError: no dataset or output directory, a dataset missing or malformed, the stage's own checks.
        """
        if not self.cfg.train_file:
            raise UserError("no training dataset given; pass TRAIN.json (written by `offline-embft generate`)")
        if not self.cfg.out_dir:
            raise UserError("no output directory given; pass --out OUT_DIR")
        self.check_settings()
        self.train_data, self.val_data = load_datasets(self.cfg)
        self.check_datasets()

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed: the settings that shape training, the input files' content
        and, for the :attr:`weighed` models, their weights."""
        cfg = self.cfg
        settings = {key: value for key, value in dataclasses.asdict(cfg).items() if key not in self.not_fingerprinted}
        files: dict[str, Any] = dict(dataset_hashes(cfg))
        for key in dict.fromkeys(("model", *self.weighed)):
            path = getattr(cfg, key)
            if not path:
                continue
            settings[key] = str(Path(path).resolve())
            if key in self.weighed:
                # A retrained retriever mines other negatives: its weights' size and time tell them apart cheaply.
                weights = sorted(Path(path).glob("*.safetensors")) + sorted(Path(path).glob("*.bin"))
                files[f"{key}_weights"] = [(w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in weights]
        if self.distributed:
            # Another number of processes changes the global batch and the schedule: not the same run to resume.
            settings["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
        return {"settings": settings, "files": files}

    # -- the stage's own steps, in the order run() takes them ----------------------------------------------------

    def check_settings(self) -> None:
        """Settings checks of the stage, before the datasets are read."""

    def check_datasets(self) -> None:
        """Dataset checks of the stage (``train_data``/``val_data`` are loaded)."""

    def before_checkpoints(self) -> None:
        """What must happen before the checkpoint fingerprint is taken (e.g. settings read from the model)."""

    def load_model(self) -> Any:
        """The model to train (after the seed is set: a new head draws its weights)."""
        raise NotImplementedError

    def build_evaluator(self) -> Any:
        """The validation evaluator that picks the best checkpoint, or None."""
        return None

    def training_rows(self, ckpt_dir: Path, resume_from: str | None) -> Any:
        """The training rows (mined negatives included), after vocabulary extension."""
        raise NotImplementedError

    def build_trainer(self, ckpt_dir: Path, precision: str) -> Any:
        """The stage's trainer with its loss, over :func:`common_arguments`."""
        raise NotImplementedError

    def describe(self, precision: str) -> str:
        """The log line that starts training."""
        raise NotImplementedError

    def summary(self, base: dict[str, Any], val_metrics: dict[str, float], trainer: Any) -> dict[str, Any]:
        """``train_metrics.json``: the stage's keys around :func:`run_summary`'s ``base``."""
        return {**base, "val_metrics": val_metrics}

    def finish(self, summary: dict[str, Any]) -> None:
        """Steps after training on the validation set (on every process), adding to ``summary``."""

    def save_extra(self, out_dir: Path) -> None:
        """The stage's own files in the (temporary) output directory."""

    def saved_note(self, summary: dict[str, Any]) -> str:
        """What the last log line says about the saved model."""
        best = summary["val_metrics"].get("ndcg@10")
        return f"best val ndcg@10 {best:.4f} at step {summary['best_step']}" if best is not None else "no validation"


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
