"""``train.nproc`` training processes on this machine, launched with torchrun (``torch.distributed.run``).

``offline-embft train`` (and so ``offline-embft all`` and ``make train``) calls :func:`launch_train` when
``train.nproc`` resolves to more than one process and it is not already running under a distributed launcher: it
writes the resolved train config to a file and runs ``torchrun --standalone --nproc_per_node N -m offline_embft.cli
train --config FILE``. Every process then trains with its own device (``cuda:LOCAL_RANK``; gloo on CPU), and the
training code takes care of the rest (:mod:`offline_embft.train.embedder`): rank 0 prepares the checkpoint folder and
mines
hard negatives before the others read them, only rank 0 writes the model.

Across servers the same command runs under a torchrun the user starts on every node (docs/scale.md); then
``LOCAL_RANK`` is already set and nothing is launched twice.

The global batch (every device's batch together, which ``gather_across_devices`` turns into one set of in-batch
negatives) must hold no duplicate texts, or duplicates become false negatives again. In sentence-transformers 6 each
process draws its per-device batch from its own ``NoDuplicatesBatchSampler`` and accelerate gives process ``i``
every N-th batch: duplicates can meet across devices. With ``split_batches`` accelerate instead splits ONE batch of
the sampler, so the sampler draws the global batch (per-device batch x N) without duplicates and each device gets
its slice (:func:`distributed_batching`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from offline_embft.core.errors import UserError

if TYPE_CHECKING:
    from offline_embft.core.config import TrainConfig

logger = logging.getLogger(__name__)

# torchrun (and accelerate launch, and mpirun through accelerate) set these in every process they start.
LAUNCHED_ENV = "LOCAL_RANK"


def world_size() -> int:
    """Processes in this training run (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_launched() -> bool:
    """True inside a process started by torchrun (or another distributed launcher)."""
    return LAUNCHED_ENV in os.environ


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run a block on the global rank 0 first, then on the other ranks (accelerate's barrier); plain in one process.

    For what rank 0 must do before the others may look: prepare the checkpoint folder, mine hard negatives once.
    """
    if world_size() <= 1:
        yield
        return
    import torch
    from accelerate import PartialState

    # cpu=True is what makes accelerate see a multi-process CPU run (gloo); the trainer then asks for the same state.
    with PartialState(cpu=not torch.cuda.is_available()).main_process_first():
        yield


def resolve_nproc(cfg: TrainConfig, visible: int | None = None) -> int:
    """``train.nproc`` as a number: auto = visible GPUs (1 without GPUs).

    Args:
        cfg: The train config.
        visible: How many GPUs are visible, when the caller knows (default: ask torch).
    """
    if cfg.nproc != "auto":
        return int(cfg.nproc)
    if visible is None:
        from offline_embft.core.gpu_compat import visible_gpus

        visible = len(visible_gpus())
    return max(1, visible)


def distributed_batching(batch_size: int, processes: int) -> dict[str, Any]:
    """Training arguments that keep the GLOBAL batch free of duplicate texts with ``processes`` devices.

    The sampler draws ``batch_size x processes`` rows without duplicates; accelerate splits each such batch into
    ``processes`` slices of ``batch_size``. The last, smaller batch is dropped: every rank must see the same number of
    steps and equal slices (``gather_across_devices`` all-gathers same-shaped tensors, and MNRL finds each rank's
    positives at ``rank x batch_size``).

    Args:
        batch_size: Per-device batch (``train.batch_size``).
        processes: World size.
    """
    if processes <= 1:
        return {"per_device_train_batch_size": batch_size}
    return {
        "per_device_train_batch_size": batch_size * processes,
        "accelerator_config": {"split_batches": True},
        "dataloader_drop_last": True,
    }


def launch_train(cfg: TrainConfig, nproc: int) -> None:
    """Run ``offline-embft train`` in ``nproc`` processes under torchrun on this machine; wait for it.

    Raises:
        UserError: the training processes failed (their own error is printed above).
    """
    from offline_embft.core.config import to_dict

    out_dir = Path(cfg.out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # The resolved config, so every process trains exactly what this command was asked (flags, --set, YAML).
    with tempfile.NamedTemporaryFile(
        "w", prefix=f".{out_dir.name}.launch.", suffix=".yaml", dir=out_dir.parent, delete=False, encoding="utf-8"
    ) as handle:
        yaml.safe_dump({"train": {**to_dict(cfg), "nproc": str(nproc)}}, handle, allow_unicode=True)
        config_file = handle.name
    verbosity = ["-v"] if logging.getLogger("offline_embft").isEnabledFor(logging.DEBUG) else []
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a private rendezvous on a free local port: two runs on one server do not collide
        f"--nproc_per_node={nproc}",
        "-m",
        "offline_embft.cli",
        *verbosity,
        "train",
        cfg.train_file,  # named, so the file's validation setting is taken as it is (not the pipeline layout's)
        "--config",
        config_file,
    ]
    logger.info("launching %d training processes: %s", nproc, " ".join(command[2:]))
    try:
        code = subprocess.run(command, check=False, env=os.environ.copy()).returncode
    finally:
        Path(config_file).unlink(missing_ok=True)
    if code != 0:
        raise UserError(
            f"training in {nproc} processes failed (torchrun exit {code}); see the first error above; run the same "
            "command again to resume from the last checkpoint"
        )
