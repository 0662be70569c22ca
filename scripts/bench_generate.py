"""Question generation speed: batched engine calls vs one call per chunk (the old pattern), same backend and model.

Runs the generate stage on N real chunks (statute articles from data/laws) three ways and prints a markdown table:

* ``native, batch B``   — this toolkit: B prompts per engine call, similar lengths together
* ``native, batch 1``   — the same stage with one prompt per engine call
* ``llamaindex``        — ``generate_qa_embedding_pairs``: ``llm.complete`` once per chunk (what the old scripts did)

By default the backend is transformers on CPU with a tiny random Qwen3 built on the spot (its answers are garbage,
so every chunk "fails" the filters: the timing covers generation, extraction and caching, with retries off so every
mode does the same work). ``--backend vllm`` without ``--model`` runs the same tiny model through vLLM (its CPU build
on a machine without a GPU; heads of 32 dims, the smallest vLLM's CPU attention runs, for both backends) and also
reports the engine's start-up time. On a GPU server pass a real model, e.g.
``python scripts/bench_generate.py --backend vllm --model Models/Qwen/Qwen3-0.6B --chunks 1024 --batch-size 512``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # tiny_qwen, the test fixture builder

import offline_embft  # noqa: E402, F401  (offline environment first)
from offline_embft.core.config import GenerateConfig  # noqa: E402
from offline_embft.core.errors import UserError  # noqa: E402
from offline_embft.generate.llm import create_llm  # noqa: E402
from offline_embft.generate.run import load_template, run  # noqa: E402


def load_articles(count: int) -> list[dict]:
    """``count`` statute articles, round-robin over the five laws so lengths vary like real chunks."""
    files = sorted((REPO / "data" / "laws" / "articles").glob("*.jsonl"))
    per_law = [[json.loads(line) for line in f.read_text("utf-8").splitlines() if line.strip()] for f in files]
    rows: list[dict] = []
    index = 0
    while len(rows) < count and any(index < len(law) for law in per_law):
        rows += [law[index] for law in per_law if index < len(law)]
        index += 1
    return rows[:count]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="transformers", choices=["transformers", "vllm", "openai"])
    parser.add_argument("--model", default="", help="LLM directory (default: a tiny random Qwen3 built here)")
    parser.add_argument("--base-url", default="", help="for --backend openai")
    parser.add_argument("--chunks", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--hidden-size", type=int, default=64, help="tiny model width")
    parser.add_argument("--layers", type=int, default=2, help="tiny model depth")
    parser.add_argument("--head-dim", type=int, default=32, help="tiny model head width (vLLM's CPU build: >= 32)")
    parser.add_argument("--eager", action="store_true", help="vllm: enforce_eager (no torch.compile)")
    parser.add_argument("--skip-llamaindex", action="store_true")
    parser.add_argument("--repeat", type=int, default=2, help="rounds over all modes; each mode reports its best")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default); on a shared machine use the cores that are really free: "
        "oversubscribed threads spin-wait and make every mode 5-20x slower",
    )
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)  # the random model's answers fail every filter: no need to say so

    rows = load_articles(args.chunks)
    work = Path(tempfile.mkdtemp(prefix="bench_generate_"))
    chunks = work / "chunks.jsonl"
    chunks.write_text(
        "".join(
            json.dumps({"id": r["id"], "text": r["text"], "source": r["law"], "pages": []}, ensure_ascii=False) + "\n"
            for r in rows
        ),
        encoding="utf-8",
    )
    model = args.model
    if not model and args.backend in ("transformers", "vllm"):
        from tiny_qwen import build_tiny_qwen

        model = str(
            build_tiny_qwen(
                work / "tiny-qwen3",
                [r["text"] for r in rows] + [load_template()],
                hidden_size=args.hidden_size,
                num_layers=args.layers,
                head_dim=args.head_dim,
            )
        )
    base = dict(
        backend=args.backend,
        model=model,
        base_url=args.base_url,
        device="auto",
        max_new_tokens=args.max_new_tokens,
        max_retries=0,
    )
    if args.backend == "vllm":
        base["enforce_eager"] = args.eager
    began = time.perf_counter()
    llm = create_llm(GenerateConfig(**base))
    startup = time.perf_counter() - began
    llm.complete_batch(["预热？"] * 2, raw=True)  # first-call overheads (kernels, allocator) are not what we measure
    if not args.skip_llamaindex:
        handlers = list(logging.root.handlers)
        import llama_index.finetuning  # noqa: F401  (its import is slow; keep it out of the timing)

        for handler in [h for h in logging.root.handlers if h not in handlers]:
            logging.root.removeHandler(handler)  # it adds a stdout handler to the root logger

    modes = [(f"native, batch {args.batch_size}", "native", args.batch_size), ("native, batch 1", "native", 1)]
    if not args.skip_llamaindex:
        modes.append(("llamaindex (generate_qa_embedding_pairs)", "llamaindex", 1))
    load_before = os.getloadavg()
    best: dict[str, tuple[int, float]] = {}
    # Rounds interleave the modes and each keeps its best time: on a shared machine, a neighbour's burst then
    # slows one sample, not one mode.
    for round_ in range(args.repeat):
        for label, engine, batch in modes:
            cache = work / f"cache-{engine}-{batch}-{round_}"  # fresh each time: every answer is generated
            cfg = GenerateConfig(**base, engine=engine, batch_size=batch, cache_dir=str(cache))
            out = work / f"{engine}-{batch}.json"
            calls = llm.engine_calls
            started = time.perf_counter()
            # A random model writes no valid question (UserError); the timing is what we are after.
            with contextlib.suppress(UserError):
                run(cfg, chunks, out, llm=llm)
            elapsed = time.perf_counter() - started
            if label not in best or elapsed < best[label][1]:
                best[label] = (llm.engine_calls - calls, elapsed)
    results = [(label, *best[label]) for label, _, _ in modes]
    load_after = os.getloadavg()
    llm.close()

    reference = len(rows) / results[1][2]
    engine = ""
    if args.backend == "vllm":
        kv_mib = llm.settings().get("kv_cache_memory_bytes", 0) >> 20
        engine = f" ({'eager' if args.eager else 'compiled'}" + (f", KV cache {kv_mib} MiB)" if kv_mib else ")")
    print(
        f"\nGenerate: {len(rows)} chunks (statute articles), backend {args.backend}, model "
        f"{Path(model).name if model else llm.model_name}, max_new_tokens {args.max_new_tokens}, "
        f"best of {args.repeat} interleaved rounds; engine start-up {startup:.1f} s{engine}\n"
    )
    print("| mode | engine calls | seconds | chunks/s | speed-up vs one call per chunk |")
    print("|---|---:|---:|---:|---:|")
    for label, calls, elapsed in results:
        rate = len(rows) / elapsed
        print(f"| {label} | {calls} | {elapsed:.1f} | {rate:.1f} | {rate / reference:.1f}x |")
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU {cpu_name()}"
    print(
        f"\nMachine: {device}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads); "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after."
    )
    if args.backend in ("transformers", "vllm") and not args.model:
        print(
            f"Tiny random Qwen3: hidden {args.hidden_size}, {args.layers} layers, heads of {args.head_dim}, character "
            "vocabulary."
        )
    if args.backend == "vllm":
        import vllm

        print(
            f"vLLM {vllm.__version__}"
            + (" (CPU build)" if llm.settings().get("enable_chunked_prefill") is False else "")
        )


if __name__ == "__main__":
    main()
