"""Question cleanliness and chunk coverage through LlamaIndex, against a server that answers like Qwen3.

A loopback OpenAI-compatible server (tests/qwen3_server.py) wraps known questions in what Qwen3 writes around them
(think blocks, 问题：/生成的问题： prefixes, numbering, quotes, explanations) and gives nothing usable on the first
attempt for some chunks (empty text, only thinking, refusals, English). A dataset question is dirty when it is not
exactly one of the questions the server meant for its chunk. Three ways to build the dataset, same chunks:

* ``generate --engine native``
* ``generate --engine llamaindex``    (our prompt, ``generate_qa_embedding_pairs`` inside the stage)
* ``generate_qa_embedding_pairs(llm=<our LLM>)`` called from user code with LlamaIndex's default prompt, 2 questions

Run it on any checkout: ``PYTHONPATH=<checkout> python scripts/bench_clean_questions.py --chunks 40``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # qwen3_server, the test helper

import offline_embft  # noqa: E402  (offline environment first)
from offline_embft.core.config import GenerateConfig  # noqa: E402
from offline_embft.core.dataset import QADataset  # noqa: E402
from offline_embft.generate.llm import create_llm  # noqa: E402
from offline_embft.generate.run import run as generate_run  # noqa: E402


def load_articles(count: int) -> list[dict]:
    """``count`` statute articles, round-robin over the five laws."""
    files = sorted((REPO / "data" / "laws" / "articles").glob("*.jsonl"))
    per_law = [[json.loads(line) for line in f.read_text("utf-8").splitlines() if line.strip()] for f in files]
    rows = [law[i] for i in range(max(map(len, per_law))) for law in per_law if i < len(law)]
    return rows[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=40)
    parser.add_argument("--failure-share", type=float, default=0.3, help="chunks whose first attempt is unusable")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    warnings.simplefilter("ignore")
    from qwen3_server import Qwen3LikeServer

    handlers = list(logging.root.handlers)
    from llama_index.core.schema import TextNode
    from llama_index.finetuning import generate_qa_embedding_pairs

    for handler in [h for h in logging.root.handlers if h not in handlers]:
        logging.root.removeHandler(handler)  # it adds a stdout handler to the root logger

    rows = load_articles(args.chunks)
    work = Path(tempfile.mkdtemp(prefix="bench_clean_"))
    chunks = work / "chunks.jsonl"
    chunks.write_text(
        "".join(json.dumps({"id": r["id"], "text": r["text"]}, ensure_ascii=False) + "\n" for r in rows), "utf-8"
    )
    server = Qwen3LikeServer(failure_share=args.failure_share)
    load_before = os.getloadavg()
    results = []
    try:
        base = dict(backend="openai", base_url=server.url, model="Qwen3-8B", max_retries=2)
        for engine in ("native", "llamaindex"):
            out = work / f"{engine}.json"
            generate_run(GenerateConfig(**base, engine=engine), chunks, out)
            dataset = QADataset.load(out)
            stats = json.loads(out.with_name(out.stem + ".stats.json").read_text("utf-8"))
            results.append((f"generate --engine {engine}", dataset, len(rows), stats.get("filtered")))

        llm = create_llm(GenerateConfig(**base))
        nodes = [TextNode(id_=r["id"], text=r["text"]) for r in rows]
        result = generate_qa_embedding_pairs(
            nodes=nodes, llm=llm, num_questions_per_chunk=2, output_path=str(work / "user.json"), verbose=False
        )
        user = QADataset(
            queries=dict(result.queries),
            corpus={r["id"]: r["text"] for r in rows},
            relevant_docs={k: list(v) for k, v in result.relevant_docs.items()},
        )
        label = "user code: generate_qa_embedding_pairs(llm=create_llm(...)), 2 per chunk"
        results.append((label, user, len(rows), None))
        llm.close()
    finally:
        server.close()
    load_after = os.getloadavg()

    commit = subprocess.run(
        ["git", "-C", str(Path(offline_embft.__file__).parents[1]), "log", "-1", "--format=%h %s"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(f"\nClean questions: {len(rows)} statute articles, Qwen3-like loopback server, code at {commit[:60]}\n")
    print("| path | questions | dirty | dirty examples | chunks with a clean question |")
    print("|---|---:|---:|---|---:|")
    for label, dataset, total, _ in results:
        dirty = server.dirty(dataset.queries, dataset.relevant_docs, dataset.corpus)
        dirty_ids = {qid for qid, q in dataset.queries.items() if q in set(dirty)}
        covered = len({docs[0] for qid, docs in dataset.relevant_docs.items() if qid not in dirty_ids})
        examples = "; ".join(repr(q[:30]) for q in dirty[:2]).replace("|", "\\|")
        share = f"{covered}/{total} ({covered / total:.0%})"
        print(f"| {label} | {len(dataset.queries)} | {len(dirty)} | {examples} | {share} |")
    print(
        f"\n{len(server.requests)} requests; machine: {os.cpu_count()} cores, load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after."
    )


if __name__ == "__main__":
    main()
