"""The ``train`` section: fine-tuning the embedding model."""

from __future__ import annotations

from dataclasses import dataclass

from offline_embft.core.config.fields import (
    EXTEND_VOCAB,
    NEGATIVE_SOURCES,
    PRECISIONS,
    RETENTION_MARGIN,
    check,
    check_count,
    documented,
)

LOSSES = ("mnrl", "cached-mnrl")


@dataclass
class TrainConfig:
    """Fine-tune a sentence-transformers model with MultipleNegativesRankingLoss, done right."""

    train_file: str = documented("Training dataset (EmbeddingQAFinetuneDataset JSON).", "")
    val_file: str = documented("Validation dataset for in-training evaluation (empty: none).", "")
    model: str = documented("Base sentence-transformers model directory (run convert first for raw HF models).", "")
    out_dir: str = documented("Output model directory (the best checkpoint by val ndcg@10).", "")
    epochs: int = documented("Training epochs.", 3)
    batch_size: int = documented("Pairs per batch: every other passage in the batch is a negative.", 32)
    mini_batch_size: int = documented("Mini-batch for cached-mnrl (GPU memory bound, not the effective batch).", 16)
    lr: float = documented("Peak learning rate.", 1e-4)
    warmup_ratio: float = documented("Share of steps for linear warmup.", 0.1)
    weight_decay: float = documented("AdamW weight decay.", 0.01)
    loss: str = documented("mnrl or cached-mnrl (big effective batches on small GPUs).", "mnrl")
    matryoshka_dims: list[int] = documented(
        "Wrap the loss in MatryoshkaLoss with these dims (empty: off).", factory=list
    )
    hard_negatives: int = documented(
        "Hard negatives mined per query (0: in-batch negatives only; configs/default.yaml mines 1: +0.017 ndcg@10 "
        "over three seeds for about twice the training time, docs/train.md).",
        0,
    )
    hard_negative_source: str = documented("Where hard negatives come from: model, bm25 or both (rank-fused).", "both")
    extend_vocab: str = documented("Add corpus characters the tokenizer maps to UNK: auto, on, off.", "auto")
    vocab_draws: int = documented(
        "When extend_vocab adds tokens: draw their random rows this many times and keep the draw the untrained model "
        "ranks the validation set best with (1: one draw; 8 measured no better on average, docs/quality.md).",
        1,
    )
    max_seq_length: int = documented("Truncate passages to this many tokens (0: keep the model's).", 0)
    query_prompt: str = documented("Instruction prepended to queries (e.g. BGE's Chinese instruction).", "")
    passage_prompt: str = documented("Prefix prepended to passages.", "")
    precision: str = documented("auto (bf16/fp16 on GPU, fp32 on CPU), bf16, fp16 or fp32.", "auto")
    seed: int = documented("Seed for reproducible runs.", 42)
    eval_steps: int = documented("Evaluate every N steps (0: once per epoch).", 0)
    resume: bool = documented("Resume from the last checkpoint in <out_dir>.checkpoints/ if there is one.", True)
    keep_checkpoints: bool = documented(
        "Keep <out_dir>.checkpoints/ after a successful run (default: delete it).", False
    )
    nproc: str = documented(
        "Training processes on this machine (`torchrun --nproc_per_node`, launched by train/all/make): auto (visible "
        "GPUs, 1 without GPUs) or N (N > 1 works on CPU with gloo). train.batch_size stays the per-device batch.",
        "auto",
    )
    weight_ensemble: bool = documented(
        "WiSE-FT / LM-Cocktail merge: save alpha*fine-tuned + (1-alpha)*base weights. alpha is chosen on the "
        "validation set; with general sets (train.general), the alpha with the best validation score among those "
        "losing at most train.retention_margin ndcg@10 on them against the base model (train_metrics.json says "
        "both numbers).",
        False,
    )
    general: list[str] = documented(
        "General retrieval sets the merge (weight_ensemble) keeps the base model's ability on (BEIR directories or "
        "dataset JSON; the pipeline: general.sets).",
        factory=list,
    )
    retention_margin: float = documented(
        "ndcg@10 the merge may give up on the general sets (mean over the sets) against the base model.",
        RETENTION_MARGIN,
    )
    fusion: bool = documented(
        "Choose the weight of BM25 fusion on the validation set and save it beside the model as fusion.json (not on "
        "ict pseudo-questions, which misjudge BM25: evaluate --questions chooses it on real ones).",
        True,
    )

    def __post_init__(self) -> None:
        check_count(self.nproc, "train.nproc")
        check(
            0.0 <= self.retention_margin < 1.0,
            f"train.retention_margin must be in [0, 1), got {self.retention_margin}",
        )
        check(self.loss in LOSSES, f"train.loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        check(
            self.extend_vocab in EXTEND_VOCAB, f"train.extend_vocab must be auto, on or off, got {self.extend_vocab!r}"
        )
        check(self.epochs >= 1, "train.epochs must be at least 1")
        check(self.batch_size >= 2, "train.batch_size must be at least 2 (in-batch negatives need company)")
        check(self.lr > 0, "train.lr must be positive")
        check(self.hard_negatives >= 0, "train.hard_negatives must be >= 0")
        check(self.vocab_draws >= 1, "train.vocab_draws must be at least 1")
        check(
            self.hard_negative_source in NEGATIVE_SOURCES,
            "train.hard_negative_source must be model, bm25 or both",
        )
        check(self.precision in PRECISIONS, "train.precision must be auto, bf16, fp16 or fp32")
