"""The parity check: the served model must give what sentence-transformers gives on the same directory.

Before ``serve`` says "ready", ~16 of the run's own validation texts (questions with the query instruction, and
passages) go through the HTTP endpoint and through sentence-transformers; every cosine must be >= 0.999. For the
reranker, a few questions each with up to 16 candidate passages go through ``/v1/rerank`` and through
``CrossEncoder.predict``; the served scores must order each question's candidates as CrossEncoder does (Spearman >=
0.99). A mismatch names its likely cause (pooling, normalisation, a different model) by comparing the served vectors
with the model's own token embeddings pooled each way. The result is written as ``serve_check.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from offline_embft.core.chunks import read as read_chunks
from offline_embft.core.dataset import QADataset
from offline_embft.core.errors import UserError
from offline_embft.serve.models import Embedder, Reranker

logger = logging.getLogger(__name__)

COSINE_MIN = 0.999
SPEARMAN_MIN = 0.99
CHECK_FILE = "serve_check.json"
# Used only when the run has neither a validation dataset nor validation chunks (a model served on its own).
FALLBACK_TEXTS = [
    "期货交易应当遵循公开、公平、公正的原则。",
    "保险合同是投保人与保险人约定保险权利义务关系的协议。",
    "公司法规定股东会行使下列职权。",
    "证券投资基金管理人应当履行诚实信用、谨慎勤勉的义务。",
    "什么情况下可以解除保险合同？",
    "期货交易场所应当遵循什么原则？",
    "股东会有哪些职权？",
    "基金管理人有哪些义务？",
]


class ParityError(UserError):
    """The served model does not give what the model directory gives."""


@dataclass
class Texts:
    """What the check sends: questions and passages, and for the reranker each question's candidates."""

    queries: list[str]
    passages: list[str]
    source: str
    rerank: list[tuple[str, list[str]]] = field(default_factory=list)


def sample(dataset: Path | None, chunks: Path | None, count: int = 16, candidates: int = 16) -> Texts:
    """Half questions, half passages from the validation dataset (else validation chunks, else a built-in sample)."""
    if dataset is not None and dataset.is_file():
        data = QADataset.load(dataset)
        qids = list(data.queries)[: max(1, count // 2)]
        doc_ids = list(dict.fromkeys(d for q in qids for d in data.relevant_docs[q]))
        doc_ids += [d for d in data.corpus if d not in doc_ids]
        passages = [data.corpus[d] for d in doc_ids[: max(1, count - len(qids))]]
        rerank = []
        for qid in qids[:2]:
            own = data.relevant_docs[qid]
            others = [d for d in data.corpus if d not in own]
            pool = list(dict.fromkeys([*own, *others[: candidates - len(own)]]))[:candidates]
            rerank.append((data.queries[qid], [data.corpus[d] for d in pool]))
        return Texts(
            [data.queries[q] for q in qids], passages, f"{dataset} (validation questions and passages)", rerank
        )
    if chunks is not None and chunks.is_file():
        rows, _ = read_chunks(chunks, limit=max(count, candidates))
        texts = [row.text for row in rows]
        if texts:
            return Texts([], texts[:count], f"{chunks} (validation chunks)", [(texts[0][:40], texts[:candidates])])
    half = len(FALLBACK_TEXTS) // 2
    return Texts(
        FALLBACK_TEXTS[half:],
        FALLBACK_TEXTS[:half],
        "built-in sample (no validation data found)",
        [(FALLBACK_TEXTS[half], FALLBACK_TEXTS[:half])],
    )


def _client(api_key: str) -> httpx.Client:
    # trust_env=False: a proxy set for the outside world must not intercept loopback requests.
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(headers=headers, timeout=120, trust_env=False)


def _post(client: httpx.Client, url: str, body: dict) -> Any:
    response = client.post(url, json=body)
    if response.status_code != 200:
        raise ParityError(f"parity check: {url} answered {response.status_code}: {response.text[:200]}")
    return response.json()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def _pooled_alternatives(model: Any, texts: list[str], normalize: bool) -> dict[str, np.ndarray]:
    """The model's own token embeddings pooled each way vLLM can pool (to name a pooling mismatch)."""
    tokens = model.encode(texts, output_value="token_embeddings", convert_to_numpy=False)
    ways = {"CLS": lambda t: t[0], "MEAN": lambda t: t.mean(0), "LAST": lambda t: t[-1]}
    out = {}
    for name, pool in ways.items():
        vectors = np.stack([pool(t.float().cpu().numpy()) for t in tokens])
        if normalize:
            vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        out[name] = vectors
    return out


def _embedding_cause(spec: Embedder, model: Any, texts: list[str], served: np.ndarray, local: np.ndarray) -> str:
    """The likely reason served vectors differ, from what they look like."""
    if served.shape[1] != local.shape[1]:
        return f"the server returns {served.shape[1]}-dim vectors, the model {local.shape[1]}: another model is served"
    norms = np.linalg.norm(served, axis=1)
    if spec.normalize and np.max(np.abs(norms - 1)) > 1e-3:
        return "the served vectors are not normalized (the model ends in Normalize): normalization missing"
    try:
        alternatives = _pooled_alternatives(model, texts, spec.normalize)
    except Exception as exc:  # diagnosis only: never hide the mismatch itself
        logger.debug("could not pool token embeddings: %s", exc)
        alternatives = {}
    for name, vectors in alternatives.items():
        if name != spec.pooling and _cosines(served, vectors).min() >= COSINE_MIN:
            return f"the server pools with {name}, the model with {spec.pooling}: wrong pooling"
    return (
        "neither pooling nor normalization explains it: another model or weights, or precision "
        "(try serve.dtype=float32)"
    )


def check_embedder(
    spec: Embedder, url: str, name: str, texts: Texts, api_key: str = "", max_model_len: int | None = None
) -> dict[str, Any]:
    """Embed the texts through the server and with sentence-transformers; return the result, raise on a mismatch.

    Raises:
        ParityError: a cosine under COSINE_MIN (the message names the likely cause), or the server refused.
    """
    from offline_embft.core.model_files import load_sentence_transformer

    inputs = [spec.query_prompt + q for q in texts.queries] + [spec.passage_prompt + p for p in texts.passages]
    body: dict[str, Any] = {"model": name, "input": inputs, "encoding_format": "float"}
    if max_model_len:
        body["truncate_prompt_tokens"] = max_model_len  # truncate as sentence-transformers does (right side)
    with _client(api_key) as client:
        answer = _post(client, f"{url}/v1/embeddings", body)
    served = np.array([row["embedding"] for row in sorted(answer["data"], key=lambda r: r["index"])], dtype=np.float64)
    model = load_sentence_transformer(spec.path, device="cpu")
    local = np.asarray(model.encode(inputs, convert_to_numpy=True, batch_size=16), dtype=np.float64)
    cosines = _cosines(served, local) if served.shape == local.shape else np.zeros(len(inputs))
    result = {
        "served_name": name,
        "model": str(spec.path),
        "pooling": spec.pooling,
        "normalize": spec.normalize,
        "query_prompt": spec.query_prompt,
        "passage_prompt": spec.passage_prompt,
        "texts": len(inputs),
        "min_cosine": round(float(cosines.min()), 6),
        "mean_cosine": round(float(cosines.mean()), 6),
        "threshold": COSINE_MIN,
        "passed": bool(cosines.min() >= COSINE_MIN),
    }
    if not result["passed"]:
        worst = int(np.argmin(cosines))
        result["cause"] = _embedding_cause(spec, model, inputs, served, local)
        result["worst_text"] = inputs[worst][:80]
    return result


def _fit_pairs(tokenizer: Any, query: str, passages: list[str], max_length: int) -> list[str]:
    """Shorten passages so each (query, passage) pair fits ``max_length`` tokens: the server refuses longer pairs
    while CrossEncoder truncates them, so only pairs both see whole are compared."""
    fitted = []
    for passage in passages:
        while passage and len(tokenizer(query, passage, verbose=False)["input_ids"]) > max_length:
            passage = passage[: int(len(passage) * 0.85)]
        fitted.append(passage)
    return fitted


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    value = spearmanr(a, b).statistic
    return 1.0 if np.isnan(value) else float(value)


def check_reranker(
    spec: Reranker, url: str, name: str, texts: Texts, api_key: str = "", max_length: int | None = None
) -> dict[str, Any]:
    """Rerank each question's candidates through the server and with CrossEncoder; raise when the orders differ.

    Raises:
        ParityError: a Spearman correlation under SPEARMAN_MIN, or the server refused.
    """
    from offline_embft.retrieval.rerank import load_cross_encoder

    model = load_cross_encoder(spec.path, device="cpu")
    limit = max_length or model.max_length or 512
    spearmans, diffs, pairs = [], [], 0
    with _client(api_key) as client:
        for query, candidates in texts.rerank:
            documents = _fit_pairs(model.tokenizer, query, candidates, limit)
            answer = _post(client, f"{url}/v1/rerank", {"model": name, "query": query, "documents": documents})
            served = np.zeros(len(documents))
            for row in answer["results"]:
                served[row["index"]] = row["relevance_score"]
            local = np.asarray(model.predict([(query, d) for d in documents], batch_size=16), dtype=np.float64)
            spearmans.append(_spearman(served, local))
            diffs.append(float(np.max(np.abs(served - local))))
            pairs += len(documents)
    result = {
        "served_name": name,
        "model": str(spec.path),
        "architecture": spec.architecture,
        "questions": len(spearmans),
        "pairs": pairs,
        "spearman": [round(s, 6) for s in spearmans],
        "min_spearman": round(min(spearmans), 6),
        "max_abs_score_diff": round(max(diffs), 6),
        "threshold": SPEARMAN_MIN,
        "passed": min(spearmans) >= SPEARMAN_MIN,
    }
    if not result["passed"]:
        result["cause"] = (
            "the served scores order the candidates differently from CrossEncoder: another model behind the port, "
            "or precision (try serve.dtype=float32)"
        )
    return result
