"""Distributed training: `train.nproc` launches torchrun itself; the GLOBAL batch holds no duplicate texts.

The batching test runs sentence-transformers' own NoDuplicatesBatchSampler through accelerate's own BatchSamplerShard,
exactly as the trainer does in each process; the end-to-end test runs `offline-embft train` with `train.nproc=2` on
CPU (gloo), two real processes under torchrun, on a tiny random BERT.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_encoders import build_tiny_bert

from offline_embft.core.dataset import QADataset
from offline_embft.train.distributed import distributed_batching

REPO = Path(__file__).resolve().parents[1]


def _shards(rows: dict[str, list[str]], args: dict, world: int) -> list[list[list[int]]]:
    """Each rank's batches of one epoch, as the trainer would build them with these training arguments."""
    import torch
    from accelerate.data_loader import BatchSamplerShard
    from datasets import Dataset
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

    sampler = NoDuplicatesBatchSampler(
        Dataset.from_dict(rows),
        batch_size=args["per_device_train_batch_size"],
        drop_last=args.get("dataloader_drop_last", False),
        generator=torch.Generator(),
        seed=7,
    )
    split = args.get("accelerator_config", {}).get("split_batches", False)
    # even_batches=False, as SentenceTransformerTrainer.get_train_dataloader sets it.
    return [
        list(BatchSamplerShard(sampler, world, rank, split_batches=split, even_batches=False)) for rank in range(world)
    ]


def test_the_global_batch_across_devices_holds_no_duplicate_texts():
    # Four questions per passage: the situation (several questions per chunk) where duplicates are likely.
    rows = {"anchor": [f"问题{i}" for i in range(64)], "positive": [f"条文{i // 4}" for i in range(64)]}
    world, per_device = 4, 3
    shards = _shards(rows, distributed_batching(per_device, world), world)
    steps = list(zip(*shards, strict=True))
    assert len(steps) == 64 // (per_device * world)  # the same number of steps on every rank
    for step in steps:
        assert all(len(share) == per_device for share in step)  # equal shares: all_gather and MNRL's offsets
        texts = [rows[column][i] for share in step for i in share for column in rows]
        assert len(texts) == len(set(texts)), step

    # The trap this avoids: per-device no-duplicate batches, dealt round-robin, collide across devices.
    naive = _shards(rows, {"per_device_train_batch_size": per_device}, world)
    collisions = 0
    for step in zip(*naive, strict=False):
        positives = [rows["positive"][i] for share in step for i in share]
        collisions += len(positives) != len(set(positives))
    assert collisions > 0
    assert distributed_batching(32, 1) == {"per_device_train_batch_size": 32}


@pytest.fixture(scope="module")
def tiny_st(tmp_path_factory) -> Path:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules

    bert = build_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert")
    model = SentenceTransformer(
        modules=[modules.Transformer(str(bert), max_seq_length=32), modules.Pooling(32, "cls"), modules.Normalize()],
        device="cpu",
    )
    out = tmp_path_factory.mktemp("st") / "tiny-bert-st"
    model.save(str(out))
    return out


def _dataset(laws_dir: Path, start: int, count: int) -> QADataset:
    full = QADataset.load(laws_dir / "qa" / "company_law.json")
    return full.subset(list(full.queries)[start : start + count])


@pytest.mark.slow
def test_nproc_2_trains_in_two_processes_and_rank_0_writes_one_model(tmp_path, laws_dir, tiny_st):
    from sentence_transformers import SentenceTransformer

    train_file = _dataset(laws_dir, 0, 16).save(tmp_path / "train.json")
    val_file = _dataset(laws_dir, 40, 6).save(tmp_path / "val.json")
    out = tmp_path / "runs" / "model"
    command = [
        sys.executable, "-m", "offline_embft.cli", "train", str(train_file), "--val", str(val_file),
        "--model", str(tiny_st), "--out", str(out), "--epochs", "1", "--batch-size", "2", "--extend-vocab", "off",
        "--hard-negatives", "1",
        "--set", "train.nproc=2", "--set", "train.hard_negative_source=bm25", "--set", "train.keep_checkpoints=true",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "launching 2 training processes" in result.stderr

    metrics = json.loads((out / "train_metrics.json").read_text("utf-8"))
    assert metrics["world_size"] == 2 and metrics["train_pairs"] == 16
    assert metrics["global_step"] == 16 // (2 * 2)  # global batch 4 = 2 per device x 2 processes
    assert metrics["best_step"] is not None and "ndcg@10" in metrics["val_metrics"]
    # One model, written once: no second copy, no temp directory, no launch file left behind.
    assert sorted(p.name for p in out.parent.iterdir()) == ["model", "model.checkpoints"]
    assert (out.parent / "model.checkpoints" / "hard_negatives.json").is_file()  # mined once, read by rank 1
    model = SentenceTransformer(str(out), device="cpu")
    assert model.encode(["公司的财产"]).shape == (1, 32)
