"""Scale-out on one machine: engine replicas, a local Ray, and torchrun training; prints a markdown table.

Three measurements, each through the real stage code:

* generate, compute-bound engine: the transformers backend on CPU with a tiny random Qwen3 (wide enough that one
  core is busy computing, not waiting), ``generate.data_parallel_size`` 1 (one engine, all cores) vs 2 (two replica
  processes, half the cores each). The issue's target: 2 replicas >= 1.7x one on a 2-core machine.
* generate through a local Ray (two Ray Data actors) vs two in-process replicas, with the ict backend (an engine
  that costs next to nothing), so the difference is the overhead of each way of fanning out.
* train with ``train.nproc`` 1 and 2 (torchrun, gloo on CPU) on a tiny random BERT: it runs and writes a model that
  loads; speed on 2 shared cores is not the point.

``python scripts/bench_scale.py`` (defaults as in docs/benchmarks.md's table); ``--skip-ray``/``--skip-train`` to
leave parts out. Run it on a quiet machine: replicas compete with every other process for the same cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # tiny_qwen, tiny_encoders: the test fixture builders

import offline_embft  # noqa: E402, F401  (offline environment first)
from offline_embft.core.config import GenerateConfig  # noqa: E402
from offline_embft.core.dataset import QADataset  # noqa: E402
from offline_embft.core.errors import UserError  # noqa: E402
from offline_embft.generate.run import load_template, run, stats_path  # noqa: E402


def load_articles(count: int) -> list[dict]:
    """``count`` statute articles, round-robin over the five laws (repeated with new ids when more are asked)."""
    files = sorted((REPO / "data" / "laws" / "articles").glob("*.jsonl"))
    laws = [[json.loads(line) for line in f.read_text("utf-8").splitlines() if line.strip()] for f in files]
    pool = [law[i] for i in range(max(map(len, laws))) for law in laws if i < len(law)]
    return [{**pool[i % len(pool)], "id": f"c{i}"} for i in range(count)]


def write_chunks(path: Path, rows: list[dict]) -> Path:
    lines = [json.dumps({"id": r["id"], "text": r["text"]}, ensure_ascii=False) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def generate_once(cfg: GenerateConfig, chunks: Path, out: Path) -> dict:
    """One generate run with a fresh cache; its stats (a random model's answers fail the filters: that is fine)."""
    with contextlib.suppress(UserError):
        run(cfg, chunks, out)
    return json.loads(stats_path(out).read_text("utf-8"))


def bench_generate(work: Path, args: argparse.Namespace) -> list[tuple[str, ...]]:
    from tiny_qwen import build_tiny_qwen

    rows = load_articles(args.chunks)
    chunks = write_chunks(work / "chunks.jsonl", rows)
    model = build_tiny_qwen(
        work / "tiny-qwen3", [r["text"] for r in rows] + [load_template()], hidden_size=args.hidden, num_layers=4
    )
    base = {
        "backend": "transformers",
        "model": str(model),
        "device": "cpu",
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "max_retries": 0,
    }
    results = []
    for size in ("1", "2"):
        cfg = GenerateConfig(**base, data_parallel_size=size, cache_dir=str(work / f"cache-tf-{size}"))
        stats = generate_once(cfg, chunks, work / f"tf-{size}.json")
        startup = stats.get("replica_startup_seconds", 0.0)
        results.append((size, stats["wall_seconds"], startup, stats["chunks"]))
    table = []
    reference = None
    for size, wall, startup, count in results:
        rate = count / wall
        reference = reference or rate
        table.append(
            (
                f"generate, transformers tiny Qwen3 (hidden {args.hidden}), {count} chunks",
                f"{size} replica{'s' if size != '1' else ''}",
                f"{wall:.1f}",
                f"{startup:.1f}" if startup else "in process",
                f"{rate:.2f} chunks/s",
                f"{rate / reference:.2f}x",
            )
        )
    return table


def bench_ray(work: Path, args: argparse.Namespace) -> list[tuple[str, ...]]:
    chunks = write_chunks(work / "chunks-ray.jsonl", load_articles(args.ray_chunks))
    base = {"backend": "ict", "batch_size": 32, "max_retries": 0, "data_parallel_size": "2"}
    table = []
    for label, extra in (("2 replica processes", {}), ("local Ray, 2 Ray Data actors", {"ray_address": "local"})):
        cfg = GenerateConfig(**base, **extra, cache_dir=str(work / f"cache-{label[:5]}"))
        started = time.perf_counter()
        out = run(cfg, chunks, work / f"ray-{label[:5]}.json")
        wall = time.perf_counter() - started
        count = len(QADataset.load(out).corpus)
        table.append(
            (
                f"generate, ict (engine ~free), {count} chunks",
                label,
                f"{wall:.1f}",
                "-",
                f"{count / wall:.1f} chunks/s",
                "",
            )
        )
    return table


def bench_train(work: Path, args: argparse.Namespace) -> list[tuple[str, ...]]:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules
    from tiny_encoders import build_tiny_bert

    bert = build_tiny_bert(work / "tiny-bert")
    base = work / "tiny-bert-st"
    SentenceTransformer(
        modules=[modules.Transformer(str(bert), max_seq_length=64), modules.Pooling(32, "cls"), modules.Normalize()],
        device="cpu",
    ).save(str(base))
    full = QADataset.load(REPO / "data" / "laws" / "qa" / "company_law.json")
    qids = list(full.queries)[: args.pairs]
    train = QADataset(
        queries={q: full.queries[q] for q in qids},
        corpus={d: full.corpus[d] for q in qids for d in full.relevant_docs[q]},
        relevant_docs={q: full.relevant_docs[q] for q in qids},
    ).save(work / "train.json")
    table = []
    for nproc in ("1", "2"):
        out = work / f"model-nproc{nproc}"
        command = [
            sys.executable, "-m", "offline_embft.cli", "-q", "train", str(train), "--model", str(base),
            "--out", str(out), "--epochs", "1", "--batch-size", "8", "--extend-vocab", "off",
            "--set", "train.val_file=", "--set", f"train.nproc={nproc}",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            table.append((f"train, tiny BERT, {args.pairs} pairs", f"nproc {nproc}", f"{wall:.1f}", "-", "FAILED", ""))
            print(result.stderr[-2000:], file=sys.stderr)
            continue
        metrics = json.loads((out / "train_metrics.json").read_text("utf-8"))
        loads = SentenceTransformer(str(out), device="cpu").encode(["公司"]).shape == (1, 32)
        table.append(
            (
                f"train, tiny BERT, {args.pairs} pairs, 1 epoch",
                f"nproc {nproc} (world_size {metrics['world_size']})",
                f"{wall:.1f}",
                "-",
                f"{metrics['global_step']} steps",
                "model loads" if loads else "MODEL DOES NOT LOAD",
            )
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=48, help="chunks for the replica comparison")
    parser.add_argument("--hidden", type=int, default=256, help="tiny Qwen3 width (compute per token)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ray-chunks", type=int, default=256)
    parser.add_argument("--pairs", type=int, default=64, help="training pairs")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    work = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    load_before = os.getloadavg()
    table = bench_generate(work, args)
    if not args.skip_ray:
        table += bench_ray(work, args)
    if not args.skip_train:
        table += bench_train(work, args)
    load_after = os.getloadavg()

    print("\n| what | how | wall s | replica start s | throughput | vs 1 replica / check |")
    print("|---|---|---:|---:|---:|---|")
    for row in table:
        print("| " + " | ".join(row) + " |")
    print(
        f"\nMachine: {os.cpu_count()} CPU cores, no GPU; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after (1 min). Wall time includes engine start (model load, process spawn)."
    )


if __name__ == "__main__":
    main()
