"""The ``general`` section: the general retrieval sets retention is measured on (did fine-tuning cost the model its
general ability?), what ``download`` fetches for them, and the loss on them that counts as too much."""

from __future__ import annotations

from dataclasses import dataclass

from offline_embft.core.config.fields import RETENTION_MARGIN, check, documented


@dataclass
class GeneralConfig:
    """General (not your documents') retrieval sets: download, evaluate's retention rows, the merge's limit."""

    sets: list[str] = documented(
        "General retrieval sets: C-MTEB names `download` fetches into <dataset_dir>/general/<name> (T2Retrieval, "
        "DuRetrieval, MMarcoRetrieval, CmedqaRetrieval, ...), or paths to your own (a BEIR directory: corpus.jsonl, "
        "queries.jsonl, qrels/*.tsv; or a dataset JSON). Empty: no retention rows.",
        factory=list,
    )
    queries: int = documented("Questions `download` keeps of each C-MTEB set (a seeded sample).", 300)
    corpus: int = documented(
        "Passages `download` keeps of each C-MTEB set: the kept questions' positives plus random others.", 3000
    )
    seed: int = documented("Seed of the subsample.", 42)
    margin: float = documented(
        "ndcg@10 the fine-tuned model may lose against the base model on a general set before the report says so "
        "(and the most train.weight_ensemble's merge gives up); sets evaluate.retention_margin and "
        "train.retention_margin where they are left at their default.",
        RETENTION_MARGIN,
    )

    def __post_init__(self) -> None:
        check(self.queries >= 1, f"general.queries must be at least 1, got {self.queries}")
        check(self.corpus >= 1, f"general.corpus must be at least 1, got {self.corpus}")
        check(0.0 <= self.margin < 1.0, f"general.margin must be in [0, 1), got {self.margin}")
