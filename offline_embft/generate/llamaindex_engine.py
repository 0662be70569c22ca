"""``generate --engine llamaindex``: the question prompt through LlamaIndex's own ``generate_qa_embedding_pairs``.

For users who want exactly LlamaIndex's loop (one ``llm.complete`` per chunk, its line splitting, its retry on an
exception). Our LLM answers ``complete`` with clean questions only and raises
:class:`~offline_embft.generate.questions.NoQuestionError` when nothing usable came back, so this path keeps the native
engine's cleanliness (same extraction, same filters, retries with another seed) and writes the same stats.
Every raw answer goes through the answer cache: LlamaIndex's own resume skips chunks by position, which goes wrong
after a failed chunk, so its work file is started fresh and the cache does the resuming.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from offline_embft.core.chunks import Chunk
from offline_embft.core.config import GenerateConfig
from offline_embft.core.dataset import QADataset
from offline_embft.generate.answer_cache import AnswerCache
from offline_embft.generate.llm import BatchLLM
from offline_embft.generate.prompt import MAX_CONTEXT_CHARS, llamaindex_template, render
from offline_embft.generate.questions import QuestionCleaner, warn_about_run

logger = logging.getLogger(__name__)


def import_generate_qa_embedding_pairs() -> Any:
    """``llama_index.finetuning.generate_qa_embedding_pairs``, without the root-logger handler its import adds."""
    handlers = list(logging.root.handlers)
    from llama_index.finetuning import generate_qa_embedding_pairs

    # Importing llama_index.finetuning adds a stdout handler to the root logger (its mistralai module): every log
    # line would print twice.
    for handler in [h for h in logging.root.handlers if h not in handlers]:
        logging.root.removeHandler(handler)
    return generate_qa_embedding_pairs


def run_llamaindex(
    cfg: GenerateConfig,
    chunks: Sequence[Chunk],
    template: str,
    llm: BatchLLM,
    cache: AnswerCache,
    out_path: Path,
) -> tuple[QADataset, dict[str, Any]]:
    """Questions for ``chunks`` through ``generate_qa_embedding_pairs``; the dataset and the stats (native's fields).

    Args:
        cfg: The generate config (questions per chunk, retries, filter thresholds).
        chunks: The chunks (``id``, ``text``), in file order.
        template: The prompt template (ours; converted to LlamaIndex's placeholders).
        llm: The backend; it cleans its answers for the duration of the run, whatever its ``raw`` setting.
        cache: The answer cache of this output.
        out_path: The dataset file (LlamaIndex's work file goes beside it and is removed).
    """
    from llama_index.core.schema import TextNode

    generate_qa_embedding_pairs = import_generate_qa_embedding_pairs()
    work = out_path.with_name(f".{out_path.stem}.llamaindex.json")
    work.unlink(missing_ok=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    texts = {c.id: c.text[:MAX_CONTEXT_CHARS] for c in chunks}
    budget = llm.prompt_budget
    if budget is not None:
        # The same token budget as the native engine: a chunk whose prompt is over the LLM's context is shortened
        # (LlamaIndex would otherwise retry a prompt the engine refuses every time).
        fitted = budget.fit_many(lambda text: render(template, text, cfg.questions_per_chunk), texts)
        texts.update((chunk_id, f.text) for chunk_id, f in fitted.items() if f is not None and f.cut_chars)
    nodes = [TextNode(id_=c.id, text=texts[c.id]) for c in chunks]
    cleaner = QuestionCleaner(
        llm.default_filter_settings(
            min_chars=cfg.min_question_chars, max_chars=cfg.max_question_chars, near_copy_ratio=cfg.near_copy_ratio
        ),
        templates=[template],
        questions_per_chunk=cfg.questions_per_chunk,
    )
    calls_before = llm.engine_calls
    try:
        with llm.question_run(cleaner, cache):
            result = generate_qa_embedding_pairs(
                nodes=nodes,
                llm=llm,
                qa_generate_prompt_tmpl=llamaindex_template(template),
                num_questions_per_chunk=cfg.questions_per_chunk,
                retry_limit=cfg.max_retries + 1,
                on_failure="continue",
                save_every=max(cfg.batch_size, 1),
                output_path=str(work),
                verbose=False,
            )
    finally:
        work.unlink(missing_ok=True)
    # A chunk LlamaIndex gave up on is missing from its corpus; it stays in ours as a distractor, like native.
    corpus = {node.node_id: node.get_content() for node in nodes}
    dataset = QADataset(
        queries=dict(result.queries),
        corpus=corpus,
        relevant_docs={k: list(v) for k, v in result.relevant_docs.items()},
    )
    return dataset, _stats(cfg, chunks, template, dataset, cleaner, llm.engine_calls - calls_before)


def _stats(
    cfg: GenerateConfig,
    chunks: Sequence[Chunk],
    template: str,
    dataset: QADataset,
    cleaner: QuestionCleaner,
    prompts_generated: int,
) -> dict[str, Any]:
    wanted = cfg.questions_per_chunk
    per_chunk = {c.id: 0 for c in chunks}
    for docs in dataset.relevant_docs.values():
        per_chunk[docs[0]] += 1
    records = {c.id: cleaner.record(render(template, c.text, wanted)) for c in chunks}
    failed = [c.id for c in chunks if not per_chunk[c.id]]
    tries = {chunk_id: r.answers + r.engine_errors for chunk_id, r in records.items()}
    warn_about_run(cleaner.filter, failed=len(failed), chunks=len(chunks), attempts=max(tries.values(), default=0))
    return {
        "questions": len(dataset.queries),
        "chunks_with_questions": len(chunks) - len(failed),
        "chunks_short": sum(1 for n in per_chunk.values() if 0 < n < wanted),
        "chunks_failed": len(failed),
        "filtered": dict(cleaner.filter.dropped),
        "surplus_dropped": cleaner.filter.surplus,
        "thinking_unclosed": cleaner.filter.thinking_unclosed,
        "engine_errors": sum(r.engine_errors for r in records.values()),
        "unusable_answers": cleaner.failures,
        "attempts": max(tries.values(), default=0),
        "retried_chunks": sum(max(n - 1, 0) for n in tries.values()),
        "prompts_generated": prompts_generated,
        "chunks_truncated_in_prompt": sum(1 for c in chunks if len(c.text) > MAX_CONTEXT_CHARS),
        "failed": [
            {
                "id": chunk_id,
                "reasons": dict(records[chunk_id].last_dropped),
                "last_answer": records[chunk_id].last_answer,
            }
            for chunk_id in failed
        ],
    }
