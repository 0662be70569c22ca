"""``offline-embft generate``: chunks → questions from a local LLM → EmbeddingQAFinetuneDataset JSON.

The native engine renders one prompt per chunk, sends them to the backend in large batches (one engine call per
batch, prompts of similar length together), caches every answer on disk as soon as its batch returns, extracts and
filters the questions (:mod:`offline_embft.generate.questions`), and retries chunks left without enough valid
questions with
another seed. Chunks that still fail are listed in the stats file, with the model's last answer, and stay in the
corpus (as distractors) without queries. The ``llamaindex`` engine runs the same prompt through LlamaIndex's
``generate_qa_embedding_pairs`` instead (:mod:`offline_embft.generate.llamaindex_engine`), with the same cleaning.

Beside ``DATASET.json`` the stage writes ``DATASET.stats.json`` (counts, reasons, failures, speed) and
``DATASET.config.yaml`` (the resolved generate config); answers live in ``generate_cache/DATASET.answers.jsonl``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from offline_embft.core.chunks import Chunk
from offline_embft.core.chunks import read as read_chunks
from offline_embft.core.config import GenerateConfig, save_config
from offline_embft.core.dataset import PSEUDO_QUERIES, QADataset, stats_path
from offline_embft.core.errors import UserError
from offline_embft.core.io import write_json
from offline_embft.core.layout import Layout
from offline_embft.generate import roundtrip
from offline_embft.generate.answer_cache import AnswerCache
from offline_embft.generate.llamaindex_engine import run_llamaindex
from offline_embft.generate.llm import BatchLLM
from offline_embft.generate.llm.base import EngineDied
from offline_embft.generate.prompt import MAX_CONTEXT_CHARS, load_template, render
from offline_embft.generate.questions import (
    FAILED_ANSWER_CHARS,
    FilterSettings,
    QuestionFilter,
    questions_per_chunk,
    warn_about_run,
)
from offline_embft.generate.scale import ReplicaUsage, create_engine

logger = logging.getLogger(__name__)


def config_path(out_path: str | Path) -> Path:
    """Where the resolved config of ``out_path`` goes: ``<stem>.config.yaml`` beside it."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + ".config.yaml")


def cache_path(cfg: GenerateConfig, out_path: str | Path) -> Path:
    """The answer cache of ``out_path``: ``<cache_dir or beside it>/generate_cache/<stem>.answers.jsonl``."""
    out_path = Path(out_path)
    directory = Path(cfg.cache_dir) if cfg.cache_dir else out_path.parent / "generate_cache"
    return directory / f"{out_path.stem}.answers.jsonl"


def run(
    cfg: GenerateConfig,
    chunks_path: Path,
    out_path: Path,
    *,
    llm: BatchLLM | None = None,
    validation: bool = False,
) -> Path:
    """Generate the question dataset of one chunks file.

    Args:
        cfg: The generate config.
        chunks_path: Chunks JSONL written by ingest.
        out_path: Dataset JSON to write (EmbeddingQAFinetuneDataset format), with stats and config beside it.
        llm: A ready backend to use instead of building one from ``cfg`` (tests, notebooks, several files in a row).

    Returns:
        ``out_path``.

    Raises:
        UserError: bad input, a backend that cannot start, or not a single valid question.
    """
    started = time.perf_counter()
    chunks_path, out_path = Path(chunks_path), Path(out_path)
    chunks, skipped = read_chunks(chunks_path)
    cfg = dataclasses.replace(cfg, questions_per_chunk=questions_per_chunk(cfg.questions_per_chunk, len(chunks)))
    template = load_template(cfg.prompt_file)
    owned = llm is None
    llm = llm or create_engine(cfg, template=template)
    calls_before = llm.engine_calls
    usage = ReplicaUsage()
    try:
        dataset, stats, cache_hits = _ask(cfg, chunks, template, llm, out_path, usage)
    finally:
        if owned:
            llm.close()
    # After the LLM has let go of the GPU. Never on a validation set: kept only where BM25 (or the base model) finds
    # their chunk, its questions would make that retriever look perfect when train picks its checkpoint and fusion.
    dataset, roundtrip_stats = roundtrip.apply(cfg, dataset) if not validation else (dataset, {"mode": "off"})
    elapsed = time.perf_counter() - started
    stats = {
        "chunks_file": str(chunks_path),
        "output": str(out_path),
        "engine": cfg.engine,
        "replicas": 1,
        **llm.settings(),
        "chunks": len(chunks),
        "chunks_skipped_empty": skipped,
        "questions_per_chunk": cfg.questions_per_chunk,
        # Read back by train (core.dataset.made_of_pseudo_queries): such questions cannot choose a BM25 fusion weight.
        PSEUDO_QUERIES: llm.pseudo_queries,
        **stats,
        "roundtrip": roundtrip_stats,
        "questions_after_roundtrip": len(dataset.queries),
        "cache_hits": cache_hits,
        "engine_calls": llm.engine_calls - calls_before,
        "wall_seconds": round(elapsed, 3),
        "chunks_per_second": round(len(chunks) / elapsed, 3) if elapsed > 0 else None,
        "per_replica": usage.stats(),
    }
    write_json(stats_path(out_path), stats)
    save_config(cfg, config_path(out_path))
    if not dataset.queries:
        raise _no_question(cfg, chunks_path, out_path, stats, llm.model_name)
    dataset.save(out_path)
    logger.info(
        "%s: %d questions for %d of %d chunks (%d failed), %.1f chunks/s; stats in %s",
        out_path,
        len(dataset.queries),
        stats["chunks_with_questions"],
        len(chunks),
        stats["chunks_failed"],
        stats["chunks_per_second"] or 0.0,
        stats_path(out_path),
    )
    return out_path


def _ask(
    cfg: GenerateConfig, chunks: list[Chunk], template: str, llm: BatchLLM, out_path: Path, usage: ReplicaUsage
) -> tuple[QADataset, dict[str, Any], int]:
    """The questions of ``chunks`` by the configured engine, every answer through the answer cache of ``out_path``:
    (dataset, the engine's stats, cache hits)."""
    with AnswerCache(cache_path(cfg, out_path)) as cache:
        if cfg.engine == "llamaindex":
            dataset, stats = run_llamaindex(cfg, chunks, template, llm, cache, out_path)
        else:
            dataset, stats = _run_native(cfg, chunks, template, llm, cache, usage)
        return dataset, stats, cache.hits


def _no_question(
    cfg: GenerateConfig, chunks_path: Path, out_path: Path, stats: dict[str, Any], model_name: str
) -> UserError:
    """The one-line error when not a single chunk got a valid question: the top filter reasons, and what to check."""
    reasons = ", ".join(f"{k} {v}" for k, v in Counter(stats.get("filtered", {})).most_common(3) if v)
    return UserError(
        f"no valid question for any of the {stats['chunks']} chunks of {chunks_path} ({reasons or 'no answers'}); "
        f"the model's answers are in {stats_path(out_path)}: is {model_name} an instruct model, "
        f"and is generate.max_new_tokens ({cfg.max_new_tokens}) enough?"
    )


def run_many(cfg: GenerateConfig, jobs: list[tuple[Path, Path]], validation: Sequence[Path] = ()) -> list[Path]:
    """Generate several datasets (e.g. train and val) with ONE engine: a vLLM engine is loaded once per process.

    Every chunks file is checked before the model loads, so a missing file fails in a second, not after the load.

    Args:
        cfg: The generate config.
        jobs: (chunks file, dataset file) pairs, processed in order.
        validation: The dataset files among them that are validation sets (no round-trip filter).

    Returns:
        The dataset files written, in the order of ``jobs``.
    """
    total = sum(len(read_chunks(chunks_path)[0]) for chunks_path, _ in jobs)
    # One count for every file (sized by the whole corpus), fixed before the engine starts: ict renders it once.
    cfg = dataclasses.replace(cfg, questions_per_chunk=questions_per_chunk(cfg.questions_per_chunk, total))
    llm = create_engine(cfg, template=load_template(cfg.prompt_file))
    try:
        held_out = {Path(path) for path in validation}
        return [
            run(cfg, chunks_path, out_path, llm=llm, validation=Path(out_path) in held_out)
            for chunks_path, out_path in jobs
        ]
    finally:
        llm.close()


def dataset_path_for(chunks_path: str | Path) -> Path:
    """Where a chunks file's questions go when no output is named: ``train.jsonl`` → ``train_dataset.json``."""
    chunks_path = Path(chunks_path)
    return chunks_path.with_name(chunks_path.stem + "_dataset.json")


def run_splits(cfg: GenerateConfig, layout: Layout) -> list[Path]:
    """The pipeline's generate: the layout's train and val chunks into its train and val datasets, the val set as a
    validation set (no round-trip filter). One engine for both: a second vLLM engine in the same process would not
    get its GPU memory back.

    Returns:
        The train and val dataset files.
    """
    return run_many(
        cfg,
        [(layout.train_chunks, layout.train_dataset), (layout.val_chunks, layout.val_dataset)],
        validation=[layout.val_dataset],
    )


@dataclass
class _Round:
    """One pass over the chunks still lacking questions."""

    answers: dict[str, str]
    generated: int
    refused: dict[str, str]  # chunk id → why the engine refused its prompt (it would refuse it again)
    shortened: dict[str, int]  # chunk id → characters of the chunk left out of its prompt to fit the context


def _fit_prompts(
    cfg: GenerateConfig, todo: list[Chunk], template: str, llm: BatchLLM
) -> tuple[dict[str, str], dict[str, int], dict[str, str]]:
    """Each chunk's prompt, with the chunk shortened where the rendered prompt is over the LLM's token budget.

    The budget counts with the LLM's own tokenizer and chat template
    (:mod:`offline_embft.generate.llm.prompt_budget`); the
    cut is deterministic, so a rerun builds the same prompts and finds their answers in the cache.

    Returns:
        prompts (chunk id → prompt), shortened (chunk id → characters cut), refused (chunk id → reason, for a
        template too long to hold even a short chunk).
    """
    number = cfg.questions_per_chunk
    prompts = {c.id: render(template, c.text, number) for c in todo}
    shortened: dict[str, int] = {}
    refused: dict[str, str] = {}
    budget = llm.prompt_budget
    if budget is None:
        return prompts, shortened, refused
    texts = {c.id: c.text[:MAX_CONTEXT_CHARS] for c in todo}
    for chunk_id, fitted in budget.fit_many(lambda text: render(template, text, number), texts).items():
        if fitted is None:
            refused[chunk_id] = budget.too_long_reason()
        elif fitted.cut_chars:
            prompts[chunk_id] = fitted.prompt
            shortened[chunk_id] = fitted.cut_chars
    if shortened:
        logger.warning(
            "%d prompts were over the LLM's %d-token budget (max_model_len %d minus max_new_tokens): their chunks "
            "were shortened to fit (chunks_shortened_in_prompt in the stats)",
            len(shortened),
            budget.limit,
            budget.max_model_len,
        )
    return prompts, shortened, refused


def _answer_round(
    cfg: GenerateConfig,
    todo: list[Chunk],
    template: str,
    llm: BatchLLM,
    cache: AnswerCache,
    attempt: int,
    usage: ReplicaUsage,
) -> _Round:
    """Answers for ``todo`` (from the cache, else from the engine in batches), and what was refused or shortened."""
    seed = cfg.seed + attempt
    sampling = llm.sampling.with_seed(seed).as_dict()
    prompts, shortened, refused = _fit_prompts(cfg, todo, template, llm)
    todo = [c for c in todo if c.id not in refused]
    keys = {c.id: AnswerCache.key(llm.identity, prompts[c.id], sampling, c.id) for c in todo}
    answers: dict[str, str] = {}
    for chunk_id, key in keys.items():
        cached = cache.get(key)
        if cached is not None:
            answers[chunk_id] = cached
    # Prompts of similar length share a batch: less padding for transformers, steadier batches for vLLM.
    missing = sorted((c for c in todo if c.id not in answers), key=lambda c: len(prompts[c.id]))
    if len(answers):
        logger.info("attempt %d: %d answers from the cache, %d to generate", attempt + 1, len(answers), len(missing))
    desc = "questions" if attempt == 0 else f"retry {attempt}"
    # One bar for the whole round, whichever replica answers; each batch is on disk before the next is awaited.
    with tqdm(total=len(missing), desc=desc, unit="chunk", disable=not missing) as bar:
        items = [(c.id, prompts[c.id]) for c in missing]
        fresh = 0
        try:
            for batch in llm.answer_stream(items, seed=seed, batch_size=cfg.batch_size, raw=True):
                refused.update(batch.refused)
                done = [(chunk_id, out) for chunk_id, out in batch.answers if out is not None]
                cache.put_many(
                    {
                        "key": keys[chunk_id],
                        "chunk_id": chunk_id,
                        "attempt": attempt,
                        "model": llm.identity,
                        "answer": out,
                    }
                    for chunk_id, out in done
                )
                answers.update(done)
                fresh += len(done)
                usage.add(batch)
                bar.update(len(batch.answers))
        except EngineDied as exc:
            # Every batch that came back is on disk already: say so, and what a rerun will cost.
            raise EngineDied(
                f"{exc}; {fresh} of the {len(missing)} answers this run asked for came back and are in the answer "
                f"cache {cache.path}: run the same command again to generate only the missing {len(missing) - fresh}"
            ) from None
    return _Round(answers, len(missing), refused, shortened)


def _run_native(
    cfg: GenerateConfig, chunks: list[Chunk], template: str, llm: BatchLLM, cache: AnswerCache, usage: ReplicaUsage
) -> tuple[QADataset, dict[str, Any]]:
    """Ask, retry chunks left short, build the dataset, count what happened."""
    questions = QuestionFilter(
        FilterSettings(
            min_chars=cfg.min_question_chars,
            max_chars=cfg.max_question_chars,
            near_copy_ratio=cfg.near_copy_ratio,
            require_question=not llm.pseudo_queries,
            check_copy=not llm.pseudo_queries,
        )
    )
    rounds = _ask_until_enough(cfg, chunks, template, llm, cache, questions, usage)
    dataset = _build_dataset(cfg, chunks, rounds.kept, llm.pseudo_queries)
    failed = [c.id for c in chunks if not rounds.kept[c.id]]
    warn_about_run(questions, failed=len(failed), chunks=len(chunks), attempts=rounds.attempts)
    return dataset, _native_stats(cfg, chunks, dataset, questions, rounds, failed)


@dataclass
class _Rounds:
    """What the answer rounds produced: the questions kept per chunk, and the counts the stats report."""

    kept: dict[str, list[str]]
    last: dict[str, tuple[str | None, Counter[str]]] = field(default_factory=dict)  # last answer, drop reasons
    refused: dict[str, str] = field(default_factory=dict)
    shortened: dict[str, int] = field(default_factory=dict)
    generated: int = 0
    engine_errors: int = 0
    retried: int = 0
    attempts: int = 0


def _ask_until_enough(
    cfg: GenerateConfig,
    chunks: list[Chunk],
    template: str,
    llm: BatchLLM,
    cache: AnswerCache,
    questions: QuestionFilter,
    usage: ReplicaUsage,
) -> _Rounds:
    """Ask for every chunk, then again (new seed, up to max_retries) for chunks left without enough questions."""
    wanted = cfg.questions_per_chunk
    rounds = _Rounds(kept={c.id: [] for c in chunks})
    kept, last = rounds.kept, rounds.last
    for attempt in range(cfg.max_retries + 1):
        # A refused prompt (longer than the engine's context) would be refused again: no retry for it.
        todo = [c for c in chunks if len(kept[c.id]) < wanted and c.id not in rounds.refused]
        if not todo:
            break
        rounds.attempts = attempt + 1
        if attempt:
            rounds.retried += len(todo)
            logger.info(
                "retrying %d chunks without enough valid questions, new seed (attempt %d)", len(todo), attempt + 1
            )
        answered = _answer_round(cfg, todo, template, llm, cache, attempt, usage)
        rounds.generated += answered.generated
        rounds.refused.update(answered.refused)
        rounds.shortened.update(answered.shortened)
        # File order, not batch order: the duplicate filter then decides the same way on a resumed run.
        for chunk in todo:
            raw = answered.answers.get(chunk.id)
            if chunk.id in answered.refused:
                last[chunk.id] = (None, Counter({answered.refused[chunk.id].split(":", 1)[0]: 1}))
                continue
            if raw is None:
                rounds.engine_errors += 1
                last[chunk.id] = (None, Counter({"engine_error": 1}))
                continue
            new, dropped = questions.select(raw, chunk.text, wanted - len(kept[chunk.id]))
            kept[chunk.id].extend(new)
            last[chunk.id] = (raw, dropped)
    return rounds


def _build_dataset(cfg: GenerateConfig, chunks: list[Chunk], kept: dict[str, list[str]], pseudo: bool) -> QADataset:
    """The EmbeddingQAFinetuneDataset: every chunk in the corpus (chunks without questions stay as distractors)."""
    if pseudo:
        from offline_embft.generate.llm.ict_backend import mask_positive

        corpus = {
            c.id: mask_positive(c.text, kept[c.id], seed=cfg.seed, chunk_id=c.id, keep_prob=cfg.ict_keep_prob)
            for c in chunks
        }
    else:
        corpus = {c.id: c.text for c in chunks}
    dataset = QADataset(corpus=corpus)
    for chunk in chunks:
        for number, question in enumerate(kept[chunk.id]):
            query_id = f"{chunk.id}-q{number}"
            dataset.queries[query_id] = question
            dataset.relevant_docs[query_id] = [chunk.id]
    return dataset


def _native_stats(
    cfg: GenerateConfig,
    chunks: list[Chunk],
    dataset: QADataset,
    questions: QuestionFilter,
    rounds: _Rounds,
    failed: list[str],
) -> dict[str, Any]:
    """The counts of the stats file: questions, chunks served, filtered, retried, refused, and each failure."""
    wanted, kept, last, refused = cfg.questions_per_chunk, rounds.kept, rounds.last, rounds.refused
    return {
        "questions": len(dataset.queries),
        "chunks_with_questions": sum(1 for c in chunks if kept[c.id]),
        "chunks_short": sum(1 for c in chunks if 0 < len(kept[c.id]) < wanted),
        "chunks_failed": len(failed),
        "filtered": dict(questions.dropped),
        "surplus_dropped": questions.surplus,
        "thinking_unclosed": questions.thinking_unclosed,
        "engine_errors": rounds.engine_errors,
        "attempts": rounds.attempts,
        "retried_chunks": rounds.retried,
        "prompts_generated": rounds.generated,
        "chunks_truncated_in_prompt": sum(1 for c in chunks if len(c.text) > MAX_CONTEXT_CHARS),
        # Chunks cut (at the end) so the rendered prompt fits the LLM's context in tokens, and prompts the engine
        # refused all the same (listed under "failed" with the engine's reason).
        "chunks_shortened_in_prompt": len(rounds.shortened),
        "prompts_refused": len(refused),
        "failed": [
            {
                "id": chunk_id,
                "reasons": dict(last.get(chunk_id, (None, Counter()))[1]),
                "last_answer": (last.get(chunk_id, (None, None))[0] or "")[:FAILED_ANSWER_CHARS],
                **({"refused": refused[chunk_id]} if chunk_id in refused else {}),
            }
            for chunk_id in failed
        ],
    }
