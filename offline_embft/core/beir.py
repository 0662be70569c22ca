"""Retrieval sets in BEIR layout, and the general sets under ``Dataset/general/`` that retention is measured on.

BEIR layout (the layout of the BEIR benchmark and of MTEB's retrieval tasks, which C-MTEB's sets follow)::

    <dir>/corpus.jsonl     {"_id": ..., "title": ..., "text": ...}  one passage a line
    <dir>/queries.jsonl    {"_id": ..., "text": ...}                one question a line
    <dir>/qrels/<split>.tsv   query-id <TAB> corpus-id <TAB> score  (a header line; score > 0 is relevant)

A retrieval set is either such a directory or our dataset JSON (:class:`~offline_embft.core.dataset.QADataset`);
:func:`load_set` reads both into a :class:`QADataset`, so evaluate and train treat a downloaded C-MTEB subsample and a
user's own set alike. ``download`` writes each general set as ``Dataset/general/<name>/`` in BEIR layout with a
``general_set.json`` manifest saying where it came from and how it was subsampled.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offline_embft.core.dataset import QADataset
from offline_embft.core.errors import UserError
from offline_embft.core.io import atomic_dir, read_json

logger = logging.getLogger(__name__)

GENERAL_DIR = "general"  # under the pipeline's dataset_dir
MANIFEST = "general_set.json"
CORPUS_FILE = "corpus.jsonl"
QUERIES_FILE = "queries.jsonl"
QRELS_DIR = "qrels"
# The split read when qrels/ holds several: BEIR's evaluation split first, then C-MTEB's.
SPLIT_ORDER = ("test", "dev", "validation", "train")
HINT = (
    "a retrieval set is a directory in BEIR layout (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) or a dataset "
    "JSON (EmbeddingQAFinetuneDataset)"
)


def is_beir_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory with the BEIR files."""
    path = Path(path)
    return (path / CORPUS_FILE).is_file() and (path / QUERIES_FILE).is_file() and (path / QRELS_DIR).is_dir()


def _read_lines(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path} line {number} is not JSON; {HINT}") from None
            missing = [key for key in required if key not in row]
            if not isinstance(row, dict) or missing:
                raise UserError(f"{path} line {number} lacks {', '.join(missing) or 'an object'}; {HINT}")
            rows.append(row)
    return rows


def _qrels_file(path: Path, split: str = "") -> Path:
    files = {f.stem: f for f in sorted((path / QRELS_DIR).glob("*.tsv"))}
    if split:
        if split not in files:
            raise UserError(f"{path}: no qrels/{split}.tsv (found {', '.join(files) or 'none'}); {HINT}")
        return files[split]
    if not files:
        raise UserError(f"{path}/qrels holds no .tsv file; {HINT}")
    return next((files[s] for s in SPLIT_ORDER if s in files), next(iter(files.values())))


def read_beir(path: str | Path, split: str = "") -> QADataset:
    """A BEIR-layout directory as a :class:`QADataset`: title and text joined, qrels with score > 0 relevant,
    queries without a relevant passage dropped (BEIR's evaluator skips them too).

    Raises:
        UserError: a file is missing or malformed, or a qrel names an unknown passage.
    """
    path = Path(path)
    if not is_beir_dir(path):
        raise UserError(f"{path} is not in BEIR layout; {HINT}")
    corpus = {}
    for row in _read_lines(path / CORPUS_FILE, ("_id", "text")):
        title = str(row.get("title") or "").strip()
        corpus[str(row["_id"])] = f"{title} {row['text']}".strip() if title else str(row["text"])
    queries = {str(row["_id"]): str(row["text"]) for row in _read_lines(path / QUERIES_FILE, ("_id", "text"))}
    qrels = _qrels_file(path, split)
    relevant: dict[str, list[str]] = {}
    with open(qrels, encoding="utf-8", newline="") as handle:
        for number, cells in enumerate(csv.reader(handle, delimiter="\t"), 1):
            if not cells or (number == 1 and cells[0] == "query-id"):
                continue
            if len(cells) < 3:
                raise UserError(f"{qrels} line {number}: expected query-id, corpus-id, score; {HINT}")
            try:
                score = float(cells[2])
            except ValueError:
                raise UserError(f"{qrels} line {number}: score {cells[2]!r} is not a number; {HINT}") from None
            if score > 0:
                relevant.setdefault(cells[0], []).append(cells[1])
    dropped = [qid for qid in queries if qid not in relevant]
    if dropped:
        logger.info("%s: %d of %d queries have no positive in %s", path, len(dropped), len(queries), qrels.name)
    dataset = QADataset(
        queries={qid: text for qid, text in queries.items() if qid in relevant},
        corpus=corpus,
        relevant_docs={qid: relevant[qid] for qid in queries if qid in relevant},
    )
    dataset.validate(path)
    return dataset


def write_beir(
    dataset: QADataset, path: str | Path, manifest: dict[str, Any] | None = None, split: str = "test"
) -> Path:
    """Write ``dataset`` as a BEIR-layout directory, atomically (with ``general_set.json`` when a manifest is
    given)."""
    with atomic_dir(path) as tmp:
        with open(tmp / CORPUS_FILE, "w", encoding="utf-8") as handle:
            for doc_id, text in dataset.corpus.items():
                handle.write(json.dumps({"_id": doc_id, "title": "", "text": text}, ensure_ascii=False) + "\n")
        with open(tmp / QUERIES_FILE, "w", encoding="utf-8") as handle:
            for qid, text in dataset.queries.items():
                handle.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
        (tmp / QRELS_DIR).mkdir()
        with open(tmp / QRELS_DIR / f"{split}.tsv", "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(["query-id", "corpus-id", "score"])
            for qid in dataset.queries:
                writer.writerows([qid, doc_id, 1] for doc_id in dataset.relevant_docs[qid])
        if manifest is not None:
            (tmp / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return Path(path)


def load_set(path: str | Path) -> QADataset:
    """A retrieval set from a BEIR-layout directory or a dataset JSON file.

    Raises:
        UserError: the path is neither, or the set is malformed.
    """
    path = Path(path)
    if path.is_dir():
        return read_beir(path)
    if path.is_file():
        return QADataset.load(path)
    raise UserError(f"retrieval set {path} not found; {HINT} (run `offline-embft download` for the configured sets)")


def general_dir(dataset_dir: str | Path, name: str) -> Path:
    """Where the general set ``name`` lives: ``<dataset_dir>/general/<name>``."""
    return Path(dataset_dir) / GENERAL_DIR / name


def resolve_general(ref: str, dataset_dir: str | Path) -> Path:
    """The path of a configured general set: a bare name (``T2Retrieval``: no directory part, not a file here) is
    ``<dataset_dir>/general/<name>``, where ``download`` puts it; anything else is a path the user brings."""
    path = Path(ref)
    if len(path.parts) == 1 and not path.suffix and not path.exists():
        return general_dir(dataset_dir, ref)
    return path


def set_name(path: str | Path) -> str:
    """How reports name a set: its directory (or file stem) name."""
    path = Path(path)
    return path.name if path.is_dir() else path.stem


@dataclass
class GeneralSet:
    """One general set found on disk, as doctor lists it."""

    name: str
    path: Path
    queries: int
    corpus: int
    source: str


def list_general(dataset_dir: str | Path) -> list[GeneralSet]:
    """The general sets under ``<dataset_dir>/general/`` (hidden download folders are not sets yet)."""
    root = Path(dataset_dir) / GENERAL_DIR
    found = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.name.startswith(".") or not is_beir_dir(path):
            continue
        manifest = read_json(path / MANIFEST) if (path / MANIFEST).is_file() else {}
        queries = manifest.get("queries") or _count_lines(path / QUERIES_FILE)
        corpus = manifest.get("corpus") or _count_lines(path / CORPUS_FILE)
        found.append(GeneralSet(path.name, path, int(queries), int(corpus), str(manifest.get("source", "your own"))))
    return found


def _count_lines(path: Path) -> int:
    with open(path, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())
