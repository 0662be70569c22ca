"""The ``evaluate`` section: base vs fine-tuned vs baselines on one dataset, with a report."""

from __future__ import annotations

from dataclasses import dataclass

from offline_embft.core.config.fields import RETENTION_MARGIN, check, documented


@dataclass
class EvaluateConfig:
    """Base vs fine-tuned vs BM25 (and hybrid) on one dataset, with a report."""

    dataset: str = documented("Evaluation dataset (EmbeddingQAFinetuneDataset JSON).", "")
    models: list[str] = documented(
        "Model directories to compare; the first is the reference for deltas.", factory=list
    )
    bm25: bool = documented("Add a BM25 baseline (jieba segmentation).", True)
    hybrid: bool = documented("Add reciprocal-rank fusion of BM25 with each model.", False)
    out_dir: str = documented("Results directory (metrics.csv/json, report.md/png, predictions).", "")
    batch_size: int = documented("Encoding batch size.", 64)
    query_prompt: str = documented("Instruction prepended to queries (must match training).", "")
    passage_prompt: str = documented("Prefix prepended to passages (must match training).", "")
    rrf_k: int = documented("Reciprocal-rank fusion constant.", 60)
    reranker: str = documented(
        "Fine-tuned reranker (CrossEncoder directory): adds 'retriever → reranker' rows for the last model and its "
        "hybrid (empty: none).",
        "",
    )
    base_reranker: str = documented(
        "The reranker before fine-tuning, reranking the same rows beside it (empty: none).", ""
    )
    rerank_top: int = documented("Passages of each retriever's ranking that the reranker re-orders.", 20)
    rerank_batch_size: int = documented("(question, passage) pairs per reranker forward pass.", 32)
    full_corpus: bool = documented(
        "Pipeline: search the validation questions among ALL chunks (training chunks as distractors), the index users "
        "will have; these are the headline numbers, the validation-chunks-only numbers go beside them.",
        True,
    )
    distractors: list[str] = documented(
        "Chunks JSONL files whose chunks join the corpus as distractors (the pipeline: the training chunks).",
        factory=list,
    )
    questions: str = documented(
        "CSV of real questions: `question` and `passage` (a snippet of the expected text) or `source` + `page`.", ""
    )
    chunks: list[str] = documented(
        "Chunks JSONL files the real questions are mapped to and searched in (the pipeline: train and val chunks).",
        factory=list,
    )
    general: list[str] = documented(
        "General retrieval sets (BEIR directories or dataset JSON; the pipeline: general.sets) each model is also "
        "scored on: the report's retention rows, the delta against the first model (the base).",
        factory=list,
    )
    retention_margin: float = documented(
        "ndcg@10 a model may lose against the first model on a general set before the verdict flags it.",
        RETENTION_MARGIN,
    )

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, "evaluate.batch_size must be at least 1")
        check(self.rerank_top >= 2, f"evaluate.rerank_top must be at least 2, got {self.rerank_top}")
        check(self.rerank_batch_size >= 1, "evaluate.rerank_batch_size must be at least 1")
        check(self.rrf_k >= 1, f"evaluate.rrf_k must be at least 1, got {self.rrf_k}")
        check(
            0.0 <= self.retention_margin < 1.0,
            f"evaluate.retention_margin must be in [0, 1), got {self.retention_margin}",
        )
