"""The LlamaIndex ``EmbeddingQAFinetuneDataset`` JSON format, read and written without depending on llama-index.

``{"queries": {qid: text}, "corpus": {doc_id: text}, "relevant_docs": {qid: [doc_id, ...]}, "mode": "text"}``
is what generate writes and what train and evaluate read; ``EmbeddingQAFinetuneDataset.from_json`` loads it too.
Loading validates the file so that a bad dataset fails with one line instead of a KeyError deep in training.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from offline_embft.core.errors import UserError
from offline_embft.core.io import write_json

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("queries", "corpus", "relevant_docs")
# The key of the stats file (beside a dataset generate wrote) saying its questions are pseudo-queries (backend ict).
PSEUDO_QUERIES = "pseudo_queries"


@dataclass
class QADataset:
    """Queries, a corpus, and which corpus ids answer each query."""

    queries: dict[str, str] = field(default_factory=dict)
    corpus: dict[str, str] = field(default_factory=dict)
    relevant_docs: dict[str, list[str]] = field(default_factory=dict)
    mode: str = "text"

    @classmethod
    def load(cls, path: str | Path, *, allow_empty: bool = False) -> QADataset:
        """Read and validate a dataset JSON.

        Raises:
            UserError: the file is missing, not JSON, not in this format, empty, or points at missing corpus ids.
        """
        path = Path(path)
        hint = "pass a dataset written by `offline-embft generate` (EmbeddingQAFinetuneDataset JSON)"
        if not path.is_file():
            raise UserError(f"dataset {path} not found; {hint}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"dataset {path} is not valid UTF-8 JSON ({exc.__class__.__name__}); {hint}") from None
        if not isinstance(data, dict) or any(key not in data for key in REQUIRED_KEYS):
            raise UserError(f"dataset {path} is not EmbeddingQAFinetuneDataset JSON (needs {REQUIRED_KEYS}); {hint}")
        for key in REQUIRED_KEYS:
            if not isinstance(data[key], dict):
                raise UserError(f"dataset {path}: '{key}' must be a JSON object; {hint}")
        dataset = cls(
            queries={str(k): str(v) for k, v in data["queries"].items()},
            corpus={str(k): str(v) for k, v in data["corpus"].items()},
            relevant_docs={
                str(k): [str(d) for d in (v if isinstance(v, list) else [v])] for k, v in data["relevant_docs"].items()
            },
            mode=str(data.get("mode", "text")),
        )
        dataset.validate(path, allow_empty=allow_empty)
        return dataset

    def validate(self, where: str | Path = "dataset", *, allow_empty: bool = False) -> None:
        """Check that the dataset is usable; raise UserError naming the first problem."""
        if not allow_empty and not self.queries:
            raise UserError(f"{where} has no queries; generate questions first (offline-embft generate)")
        if not allow_empty and not self.corpus:
            raise UserError(f"{where} has an empty corpus; ingest documents first (offline-embft ingest)")
        for qid in self.queries:
            docs = self.relevant_docs.get(qid)
            if not docs:
                raise UserError(f"{where}: query {qid!r} has no relevant_docs entry; regenerate the dataset")
            missing = [doc for doc in docs if doc not in self.corpus]
            if missing:
                raise UserError(
                    f"{where}: query {qid!r} points at corpus id {missing[0]!r}, which is not in the corpus; "
                    "regenerate the dataset"
                )

    @classmethod
    def merge(cls, parts: Sequence[QADataset]) -> QADataset:
        """One dataset from several whose ids do not clash (e.g. QA sets of different documents).

        Raises:
            UserError: two parts use one id for different texts or answers.
        """
        merged = cls()
        for part in parts:
            for name in ("queries", "corpus", "relevant_docs"):
                into, new = getattr(merged, name), getattr(part, name)
                clash = next((key for key in new if key in into and into[key] != new[key]), None)
                if clash is not None:
                    raise UserError(
                        f"cannot merge datasets: {name} id {clash!r} means different things in two of them"
                    )
                into.update(new)
        return merged

    def subset(self, query_ids: Sequence[str], keep_corpus: bool = False) -> QADataset:
        """The dataset of ``query_ids`` (in that order) with the passages they need, or the whole corpus.

        Args:
            query_ids: the questions to keep.
            keep_corpus: keep every passage (the others stay as distractors) instead of the questions' own.
        """
        needed = {doc for qid in query_ids for doc in self.relevant_docs[qid]}
        return QADataset(
            queries={qid: self.queries[qid] for qid in query_ids},
            corpus={doc: text for doc, text in self.corpus.items() if keep_corpus or doc in needed},
            relevant_docs={qid: self.relevant_docs[qid] for qid in query_ids},
            mode=self.mode,
        )

    def save(self, path: str | Path) -> Path:
        """Write the dataset atomically (the same JSON LlamaIndex's ``save_json`` writes)."""
        return write_json(
            path,
            {"queries": self.queries, "corpus": self.corpus, "relevant_docs": self.relevant_docs, "mode": self.mode},
        )

    def pairs(self) -> list[tuple[str, str]]:
        """(query, positive passage) pairs: one per (query, relevant doc)."""
        return [(self.queries[qid], self.corpus[doc]) for qid in self.queries for doc in self.relevant_docs[qid]]

    def with_distractors(self, chunk_files: Sequence[str]) -> QADataset:
        """The dataset with every chunk of ``chunk_files`` added to its corpus (itself when none is added).

        A missing file is skipped with a warning (the pipeline names the training chunks even for a user's own
        dataset).
        """
        from offline_embft.core.chunks import read as read_chunks

        corpus = dict(self.corpus)
        for chunk_file in chunk_files:
            if not Path(chunk_file).is_file():
                logger.warning("distractor chunks %s not found: evaluating without them", chunk_file)
                continue
            for chunk in read_chunks(chunk_file)[0]:
                corpus.setdefault(chunk.id, chunk.text)
        if len(corpus) == len(self.corpus):
            return self
        return QADataset(queries=self.queries, corpus=corpus, relevant_docs=self.relevant_docs, mode=self.mode)

    def __len__(self) -> int:
        return len(self.queries)


def stats_path(dataset_path: str | Path) -> Path:
    """Where generate's stats summary of ``dataset_path`` goes: ``<stem>.stats.json`` beside it."""
    dataset_path = Path(dataset_path)
    return dataset_path.with_name(dataset_path.stem + ".stats.json")


def made_of_pseudo_queries(dataset_path: str | Path) -> bool:
    """Whether generate wrote ``dataset_path`` with pseudo-queries (``ict``: sentences of the passages), by its stats
    file; False for a dataset that generate did not write.

    Here, not in generate, because train reads it (such questions cannot choose a BM25 fusion weight) and a stage
    never imports another: the dataset's sidecar is where the two meet.
    """
    path = stats_path(dataset_path)
    if not path.is_file():
        return False
    try:
        return bool(json.loads(path.read_text(encoding="utf-8")).get(PSEUDO_QUERIES, False))
    except (OSError, ValueError, AttributeError):
        return False
