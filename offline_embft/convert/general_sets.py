"""Download general Chinese retrieval sets (C-MTEB) on a connected machine, subsampled to travel in the bundle.

Retention — did fine-tuning on the user's documents cost the model its general ability? — is measured on sets like
these (:mod:`offline_embft.evaluate.run`, and the merge in :mod:`offline_embft.train.ensemble`). The sets are the
C-MTEB retrieval tasks as MTEB 2.x loads them: a Hugging Face dataset repository per task, pinned to the revision
MTEB's task metadata pins, with three configs of one split (``dev``): ``corpus`` (``_id``/``id``, ``title``,
``text``), ``queries`` (``_id``/``id``, ``text``) and the qrels (config ``default``: ``query-id``, ``corpus-id``,
``score``). The repository is fetched with ``huggingface_hub.snapshot_download`` into a hidden staging folder
``Dataset/general/.<name>.download`` (it skips finished files and resumes a cut one, so a rerun continues), every
LFS file is checked against its SHA-256 (the etag the hub recorded for it), the configs are read with ``datasets``,
and a seeded subsample — ``queries`` questions, and a corpus of their positives plus random other passages up to
``corpus`` — is written atomically to ``Dataset/general/<name>/`` in BEIR layout (:mod:`offline_embft.core.beir`)
with a ``general_set.json`` manifest. The staging folder is deleted once the subsample is written.

A mirror (``HF_ENDPOINT=https://hf-mirror.com``) is honoured. A set that is already a path on disk is not fetched, and
a set already under ``Dataset/general/`` is kept as it is when the hub is out of reach (the air-gapped server, where
``all`` runs ``download`` too, with a config that may size it differently).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offline_embft.core import offline
from offline_embft.core.beir import MANIFEST, general_dir, load_set, resolve_general, write_beir
from offline_embft.core.dataset import QADataset
from offline_embft.core.errors import UserError, first_line, raised_as
from offline_embft.core.io import read_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubSet:
    """Where MTEB 2.x loads one C-MTEB retrieval task from (mteb/tasks/retrieval/zho/cmteb_retrieval.py,
    mteb 2.26.24)."""

    repo_id: str
    revision: str
    split: str = "dev"


# The C-MTEB retrieval tasks, as pinned by MTEB 2.26.24's task metadata.
HUB_SETS: dict[str, HubSet] = {
    "T2Retrieval": HubSet("mteb/T2Retrieval", "cf778c0ea4168ec5174a34d888d6453e4cde9222"),
    "MMarcoRetrieval": HubSet("mteb/MMarcoRetrieval", "4940a7b26bf53463cfe3435bb8e201963e9c31ae"),
    "DuRetrieval": HubSet("mteb/DuRetrieval", "313c81b51311893c8fd09ca432f96b841ed0ebb3"),
    "CovidRetrieval": HubSet("mteb/CovidRetrieval", "9c6dc4b276bb47c3ff725bbc5ffcafd56dded38b"),
    "CmedqaRetrieval": HubSet("mteb/CmedqaRetrieval", "c476f85bf03d6642ec66bf54b9a551c88108bbb4"),
    "EcomRetrieval": HubSet("mteb/EcomRetrieval", "fa705ce5418e91636b1eaeaf43f34c15aa3f5a8a"),
    "MedicalRetrieval": HubSet("mteb/MedicalRetrieval", "023ae3b2c6b96f583c4ff9b3f9239c93f7885c20"),
    "VideoRetrieval": HubSet("mteb/VideoRetrieval", "146a9d5e4fd7a9c182b6b92cccb6a3753994305c"),
}
# Config names of the three parts (MTEB's loader: "query" is an older name of "queries", "qrels" of "default").
CORPUS_CONFIGS = ("corpus",)
QUERY_CONFIGS = ("queries", "query")
QRELS_CONFIGS = ("default", "qrels")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _hub_download(spec: HubSet, local_dir: Path) -> None:
    """One snapshot of the dataset repository into ``local_dir`` (finished files are skipped, a cut one resumed)."""
    with offline.hub_allowed():
        import huggingface_hub
        from huggingface_hub import constants

        # huggingface_hub reads HF_HUB_OFFLINE once, at import: lift it for this call if it was imported offline.
        was_offline, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, False
        try:
            huggingface_hub.snapshot_download(
                spec.repo_id,
                repo_type="dataset",
                revision=spec.revision,
                local_dir=str(local_dir),
                endpoint=os.environ.get("HF_ENDPOINT") or None,
                allow_patterns=["README.md", "*.parquet", "*.jsonl", "*.json", "*.tsv"],
            )
        finally:
            constants.HF_HUB_OFFLINE = was_offline


def verify(local_dir: Path) -> list[str]:
    """Files of a snapshot whose content does not match the SHA-256 the hub gave for them (LFS files; the hub's etag
    of an LFS file is its SHA-256). A mismatching file and its record are deleted, so the next run fetches it again."""
    from huggingface_hub._local_folder import get_local_download_paths, read_download_metadata

    bad = []
    files = (p for p in local_dir.rglob("*") if p.is_file() and ".cache" not in p.relative_to(local_dir).parts)
    for path in sorted(files):
        name = path.relative_to(local_dir).as_posix()
        meta = read_download_metadata(local_dir, name)
        if meta is None or not _SHA256.fullmatch(meta.etag or ""):
            continue  # a small text file stored without LFS: its etag is not a content hash
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != meta.etag:
            bad.append(name)
            path.unlink()
            get_local_download_paths(local_dir, name).metadata_path.unlink(missing_ok=True)
    return bad


def _load_config(local_dir: Path, names: tuple[str, ...], split: str, what: str) -> Any:
    import datasets

    available = datasets.get_dataset_config_names(str(local_dir))
    name = next((n for n in names if n in available), None)
    if name is None:
        raise UserError(
            f"{local_dir} has no {what} config (found {', '.join(available)}); the dataset's layout changed — "
            "pin another revision or bring the set as a BEIR directory"
        )
    parts = datasets.load_dataset(str(local_dir), name, cache_dir=str(local_dir / ".cache" / "datasets"))
    return parts[split] if split in parts else parts[next(iter(parts))]


def read_snapshot(local_dir: Path, split: str = "dev") -> QADataset:
    """The whole set in a downloaded snapshot (MTEB's layout: corpus, queries and qrels configs)."""
    corpus_ds = _load_config(local_dir, CORPUS_CONFIGS, split, "corpus")
    queries_ds = _load_config(local_dir, QUERY_CONFIGS, split, "queries")
    qrels_ds = _load_config(local_dir, QRELS_CONFIGS, split, "qrels")

    def ids(ds: Any) -> list[str]:
        return [str(i) for i in ds["_id" if "_id" in ds.column_names else "id"]]

    titles = corpus_ds["title"] if "title" in corpus_ds.column_names else [""] * len(corpus_ds)
    corpus = {
        doc_id: f"{title.strip()} {text}".strip() if title and title.strip() else str(text)
        for doc_id, title, text in zip(ids(corpus_ds), titles, corpus_ds["text"], strict=True)
    }
    relevant: dict[str, list[str]] = {}
    for qid, doc_id, score in zip(qrels_ds["query-id"], qrels_ds["corpus-id"], qrels_ds["score"], strict=True):
        if float(score) > 0 and str(doc_id) in corpus:
            relevant.setdefault(str(qid), []).append(str(doc_id))
    texts = zip(ids(queries_ds), queries_ds["text"], strict=True)
    queries = {qid: str(text) for qid, text in texts if qid in relevant}
    return QADataset(queries=queries, corpus=corpus, relevant_docs={qid: relevant[qid] for qid in queries})


def subsample(data: QADataset, queries: int, corpus: int, seed: int) -> QADataset:
    """``queries`` questions drawn at random (seeded), and a corpus of their positives plus random other passages up
    to ``corpus`` passages in all (never fewer than the positives)."""
    rng = random.Random(seed)
    qids = sorted(data.queries)
    chosen = sorted(rng.sample(qids, min(queries, len(qids))))
    needed = list(dict.fromkeys(doc for qid in chosen for doc in data.relevant_docs[qid]))
    taken = set(needed)
    others = [doc for doc in sorted(data.corpus) if doc not in taken]
    extra = rng.sample(others, max(0, min(corpus - len(needed), len(others))))
    return QADataset(
        queries={qid: data.queries[qid] for qid in chosen},
        corpus={doc: data.corpus[doc] for doc in [*needed, *sorted(extra)]},
        relevant_docs={qid: data.relevant_docs[qid] for qid in chosen},
    )


def fetch_general(name: str, dataset_dir: str | Path, queries: int, corpus: int, seed: int = 42) -> Path:
    """Make the general set ``name`` (a C-MTEB task name) present under ``<dataset_dir>/general/``; return its path.

    Present with the same source and subsample settings: nothing to do. Otherwise downloaded into the staging folder
    (resuming what an earlier run left there), verified, subsampled and written atomically.

    Raises:
        UserError: an unknown name, a failed or corrupt download (a rerun resumes), or an unexpected layout.
    """
    if name not in HUB_SETS:
        raise UserError(f"unknown general set {name!r}; use one of {', '.join(HUB_SETS)} or a path to your own set")
    spec = HUB_SETS[name]
    target = general_dir(dataset_dir, name)
    manifest = {
        "name": name,
        "source": f"huggingface:{spec.repo_id}@{spec.revision}",
        "split": spec.split,
        "seed": seed,
        "queries_asked": queries,
        "corpus_asked": corpus,
    }
    if (target / MANIFEST).is_file():
        have = read_json(target / MANIFEST)
        if all(have.get(key) == value for key, value in manifest.items()):
            logger.info("general set %s: complete at %s, nothing to do", name, target)
            return target
        logger.info("general set %s: %s was made with other settings; making it again", name, target)
    staging = target.with_name(f".{target.name}.download")
    staging.mkdir(parents=True, exist_ok=True)
    logger.info("general set %s: downloading %s@%s into %s", name, spec.repo_id, spec.revision[:8], staging)
    try:
        _hub_download(spec, staging)
    except Exception as exc:  # the hub client raises many types; the user needs one line and a retry
        if (target / MANIFEST).is_file():  # e.g. the air-gapped server, whose config sizes the set differently
            logger.warning("general set %s: the hub is out of reach (%s); keeping %s as it is", name, exc, target)
            return target
        if raised_as(exc, "RepositoryNotFoundError", "RevisionNotFoundError"):
            raise UserError(
                f"{spec.repo_id}@{spec.revision[:8]} is not on the hub (or the mirror in HF_ENDPOINT lacks it); "
                "bring the set as a BEIR directory instead"
            ) from None
        first = first_line(exc)
        raise UserError(
            f"download of general set {name} ({spec.repo_id}) failed ({first}); check the network (or set "
            f"HF_ENDPOINT to a mirror), then run `offline-embft download` again (finished files are kept in {staging})"
        ) from None
    bad = verify(staging)
    if bad:
        raise UserError(
            f"download of general set {name} is corrupt: {', '.join(bad[:3])} did not match the hub's checksum "
            "(deleted); run `offline-embft download` again to fetch it anew"
        )
    full = read_snapshot(staging, spec.split)
    part = subsample(full, queries, corpus, seed)
    part.validate(f"general set {name}")
    manifest.update(
        queries=len(part.queries),
        corpus=len(part.corpus),
        full_queries=len(full.queries),
        full_corpus=len(full.corpus),
    )
    write_beir(part, target, manifest)
    shutil.rmtree(staging)
    logger.info("general set %s: %d questions, %d passages at %s", name, len(part.queries), len(part.corpus), target)
    return target


def download_general(refs: list[str], dataset_dir: str | Path, queries: int, corpus: int, seed: int) -> list[Path]:
    """``offline-embft download``'s general sets: fetch each C-MTEB name; check that each path loads."""
    paths = []
    for ref in refs:
        path = resolve_general(ref, dataset_dir)
        if ref in HUB_SETS:
            path = fetch_general(ref, dataset_dir, queries, corpus, seed)
        else:
            load_set(path)  # the user's own set: nothing to fetch, only to check
        paths.append(path)
    return paths
