"""The ``train_reranker`` section: fine-tuning the cross-encoder reranker."""

from __future__ import annotations

from dataclasses import dataclass

from offline_embft.core.config.fields import EXTEND_VOCAB, NEGATIVE_SOURCES, PRECISIONS, check, documented

RERANKER_LOSSES = ("bce", "mnrl", "lambda", "listnet")


@dataclass
class TrainRerankerConfig:
    """Fine-tune a cross-encoder reranker on the same questions, negatives mined by the fine-tuned embedding model."""

    train_file: str = documented("Training dataset (EmbeddingQAFinetuneDataset JSON).", "")
    val_file: str = documented(
        "Validation dataset: best checkpoint by ndcg@10 of reranking the retriever's top (empty: none).", ""
    )
    model: str = documented(
        "Base reranker: a CrossEncoder directory, a Hugging Face encoder, or a sentence-transformers embedding model "
        "(its encoder gets a fresh one-score head).",
        "",
    )
    out_dir: str = documented("Output CrossEncoder directory (the best checkpoint by validation).", "")
    retriever: str = documented(
        "Embedding model that mines the hard negatives and the validation candidates (pipeline: the fine-tuned one; "
        "empty: BM25 only).",
        "",
    )
    negatives: int = documented("Hard negatives per question.", 7)
    negative_source: str = documented(
        "Where negatives come from: model (the retriever), bm25 or both (rank-fused).", "model"
    )
    loss: str = documented(
        "bce (binary cross-entropy over positive and negatives), mnrl (pick the positive among negatives and "
        "in-batch passages), lambda (LambdaLoss, listwise) or listnet.",
        "lambda",
    )
    epochs: int = documented("Training epochs.", 2)
    batch_size: int = documented(
        "Questions per batch, each with its positive and negatives ((question, passage) pairs for loss bce).", 8
    )
    lr: float = documented("Peak learning rate.", 2e-5)
    warmup_ratio: float = documented("Share of steps for linear warmup.", 0.1)
    weight_decay: float = documented("AdamW weight decay.", 0.01)
    max_length: int = documented("Truncate (question, passage) pairs to this many tokens (0: keep the model's).", 512)
    rerank_top: int = documented(
        "Validation: rerank this many passages retrieved per question (as evaluate does).", 20
    )
    blend: bool = documented(
        "Choose on validation how much of the retriever's order to keep beside the reranker's (rerank_fusion.json; "
        "never worse than either alone on validation).",
        True,
    )
    extend_vocab: str = documented("Add corpus characters the tokenizer maps to UNK: auto, on, off.", "auto")
    query_prompt: str = documented("Query instruction the retriever expects (pipeline: train.query_prompt).", "")
    passage_prompt: str = documented("Passage prefix the retriever expects (pipeline: train.passage_prompt).", "")
    precision: str = documented("auto (bf16/fp16 on GPU, fp32 on CPU), bf16, fp16 or fp32.", "auto")
    seed: int = documented("Seed for reproducible runs.", 42)
    eval_steps: int = documented("Evaluate every N steps (0: once per epoch).", 0)
    resume: bool = documented("Resume from the last checkpoint in <out_dir>.checkpoints/ if there is one.", True)
    keep_checkpoints: bool = documented(
        "Keep <out_dir>.checkpoints/ after a successful run (default: delete it).", False
    )

    def __post_init__(self) -> None:
        check(
            self.loss in RERANKER_LOSSES,
            f"train_reranker.loss must be one of {', '.join(RERANKER_LOSSES)}, got {self.loss!r}",
        )
        check(
            self.negative_source in NEGATIVE_SOURCES,
            f"train_reranker.negative_source must be model, bm25 or both, got {self.negative_source!r}",
        )
        check(self.negatives >= 1, "train_reranker.negatives must be at least 1 (a reranker learns from contrasts)")
        check(self.epochs >= 1, "train_reranker.epochs must be at least 1")
        check(self.batch_size >= 1, "train_reranker.batch_size must be at least 1")
        check(self.lr > 0, "train_reranker.lr must be positive")
        check(self.max_length >= 0, "train_reranker.max_length must be >= 0")
        check(self.rerank_top >= 2, "train_reranker.rerank_top must be at least 2")
        check(
            self.extend_vocab in EXTEND_VOCAB,
            f"train_reranker.extend_vocab must be auto, on or off, got {self.extend_vocab!r}",
        )
        check(
            self.precision in PRECISIONS,
            "train_reranker.precision must be auto, bf16, fp16 or fp32",
        )
