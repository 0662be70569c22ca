"""What a model directory is, read from its own files, before any server starts.

An embedding model is served with the pooling and normalisation its sentence-transformers modules declare, written
out explicitly as vLLM's ``--pooler-config`` (vLLM would otherwise read ``modules.json`` itself, and falls back to
the architecture's default pooling when it cannot parse a layout: sentence-transformers >= 5.4 moved the module
paths, and a CLS model silently served with MEAN pooling gives plausible, wrong vectors). A reranker must be a
``*ForSequenceClassification`` with one label. Loading one as the other also "works" and returns numbers that mean
nothing, so each is refused with one line saying what the directory is.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from offline_embft.core.errors import UserError
from offline_embft.core.io import read_json
from offline_embft.core.model_files import check_st_dir, st_max_seq_length, st_pooling, transformer_dir

logger = logging.getLogger(__name__)

# sentence-transformers pooling modes → vLLM's PoolerConfig.seq_pooling_type (vllm/config/pooler.py, 0.32).
POOLING_TO_VLLM = {"cls": "CLS", "mean": "MEAN", "lasttoken": "LAST"}


def _architectures(path: Path) -> list[str]:
    config = path / "config.json"
    if not config.is_file():
        return []
    try:
        return list(read_json(config).get("architectures") or [])
    except (OSError, ValueError):
        return []


def _num_labels(path: Path) -> int | None:
    config = read_json(path / "config.json")
    if "num_labels" in config:
        return int(config["num_labels"])
    labels = config.get("id2label")
    return len(labels) if isinstance(labels, dict) else None


def _is_classifier(architectures: list[str]) -> bool:
    return any(name.endswith("ForSequenceClassification") for name in architectures)


def _has_pooling(path: Path) -> bool:
    modules = path / "modules.json"
    if not modules.is_file():
        return False
    return any(str(m.get("type", "")).endswith("Pooling") for m in read_json(modules))


@dataclass(frozen=True)
class Embedder:
    """An embedding model as the server must run it.

    Attributes:
        path: the sentence-transformers directory (what sentence-transformers loads for the parity check).
        weights: the Hugging Face model inside it (what vLLM loads: ``modules.json``'s Transformer path).
        pooling: vLLM's name of the pooling (CLS, MEAN, LAST).
        normalize: whether the model ends in a Normalize module (vLLM: ``use_activation`` of the embed pooler).
        max_seq_length: where sentence-transformers truncates (None: the model's own limit).
        query_prompt: the instruction queries need (the model's saved ``prompts``), "" when none.
        passage_prompt: the prefix passages need, "" when none.
    """

    path: Path
    weights: Path
    pooling: str
    normalize: bool
    max_seq_length: int | None
    query_prompt: str = ""
    passage_prompt: str = ""

    def pooler_config(self) -> str:
        """vLLM's ``--pooler-config`` JSON: both fields set, nothing left to vLLM's reading of the layout."""
        return json.dumps({"seq_pooling_type": self.pooling, "use_activation": self.normalize})


@dataclass(frozen=True)
class Reranker:
    """A cross-encoder as the server must run it."""

    path: Path
    architecture: str
    max_length: int | None


def _prompts(path: Path) -> tuple[str, str]:
    """(query, passage) prompts the model declares (config_sentence_transformers.json, written by train)."""
    config = path / "config_sentence_transformers.json"
    prompts = (read_json(config).get("prompts") or {}) if config.is_file() else {}
    return prompts.get("query", "") or "", prompts.get("document", "") or prompts.get("passage", "") or ""


def embedder(path: str | Path) -> Embedder:
    """Read how to serve an embedding model directory, or raise one line saying why it cannot be served as one.

    Raises:
        UserError: the directory is missing, is a raw Hugging Face checkpoint (its pooling would be a guess), is a
            cross-encoder, or uses modules vLLM's pooling runner does not run (Dense, max or weighted pooling).
    """
    path = Path(path).expanduser()
    if path.is_dir() and _is_classifier(_architectures(path)) and not _has_pooling(path):
        raise UserError(
            f"{path} is a cross-encoder ({_architectures(path)[0]}), not an embedding model: serve it with "
            f"--reranker {path}; --model takes a sentence-transformers embedding model"
        )
    path = check_st_dir(path)  # a raw checkpoint is refused: its pooling would be a guess
    mode, normalize, others = st_pooling(path)
    if mode is None:
        raise UserError(f"{path}/modules.json has no Pooling module, so it is not an embedding model")
    if mode not in POOLING_TO_VLLM:
        raise UserError(
            f"{path} pools with {mode!r}; vLLM's pooling runner pools with cls, mean or lasttoken only, so its "
            "vectors would differ from the model's: serve it with sentence-transformers instead"
        )
    extra = [kind for kind in others if kind != "Normalize"]
    if extra:
        raise UserError(
            f"{path} has module(s) {', '.join(extra)} after pooling, which vLLM's pooling runner does not apply: "
            "its served vectors would differ from the model's"
        )
    weights = transformer_dir(path)
    if _is_classifier(_architectures(weights)):
        raise UserError(
            f"{path} holds a {_architectures(weights)[0]} (a cross-encoder's head); serve it with --reranker, not as "
            "an embedding model"
        )
    query, passage = _prompts(path)
    return Embedder(
        path=path,
        weights=weights,
        pooling=POOLING_TO_VLLM[mode],
        normalize=normalize,
        max_seq_length=st_max_seq_length(path),
        query_prompt=query,
        passage_prompt=passage,
    )


def reranker(path: str | Path) -> Reranker:
    """Read how to serve a cross-encoder directory, or raise one line saying why it is not one.

    Raises:
        UserError: the directory is missing, is an embedding model, or is not ``*ForSequenceClassification`` with
            one label (what vLLM's ``/v1/rerank`` and ``/v1/score`` need, and what ``train-reranker`` writes).
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(
            f"reranker directory {path} not found; `offline-embft train-reranker` writes one, or fix the path"
        )
    weights = transformer_dir(path)
    architectures = _architectures(weights)
    if _has_pooling(path) or (architectures and not _is_classifier(architectures)):
        raise UserError(
            f"{path} is an embedding model ({', '.join(architectures) or 'a Pooling module'}), not a cross-encoder: "
            f"serve it with --model {path}; --reranker takes a *ForSequenceClassification model with one label"
        )
    if not architectures:
        raise UserError(f"{weights} has no config.json naming its architecture, so it is not a reranker model")
    labels = _num_labels(weights)
    if labels not in (None, 1):
        raise UserError(
            f"{path} is a classifier with {labels} labels; a reranker scores a (question, passage) pair with one "
            "label (`offline-embft train-reranker` writes one)"
        )
    return Reranker(path=weights, architecture=architectures[0], max_length=st_max_seq_length(weights))
