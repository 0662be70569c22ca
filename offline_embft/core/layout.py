"""The one place that names artifact paths.

<dataset_dir>/PDF/                          the user's documents
<dataset_dir>/chunks/{train,val}.jsonl      ingest
<dataset_dir>/datasets/{train,val}_dataset.json   generate
<models_dir>/<org>/<name>                   download (or a local path as given)
<models_dir>/<org>/<name>-st                convert
<models_dir>/model_outdir/<run_name>        train
<models_dir>/model_outdir/<run_name>-reranker   train-reranker
<results_dir>/                              evaluate (metrics.csv, report.md, report.png)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from offline_embft.core.model_files import RERANKER_FROM_EMBEDDING, locate


class RunSettings(Protocol):
    """The run-wide keys a layout is drawn from (:class:`offline_embft.core.config.PipelineConfig` has them).

    A protocol, not an import: the config fills its paths from the layout, so the layout must not import the config.
    """

    dataset_dir: str
    models_dir: str
    results_dir: str
    embedding_model: str
    llm: str
    run_name: str
    reranker_model: str


def model_dir(ref: str, models_dir: str | Path = "Models") -> Path:
    """Where a model reference lives locally.

    An existing path is itself (a cache repository root resolves to its snapshot); ``package:NAME`` (a model shipped
    inside a Python package) lives under ``models_dir`` once ``offline-embft download`` has copied it there; a hub
    id ``org/name`` is found under ``models_dir`` or in the ModelScope / Hugging Face caches, else it is
    ``models_dir/org/name``, where ``offline-embft download`` puts it. Filesystem checks only (see
    :func:`offline_embft.core.model_files.locate`).
    """
    return locate(ref, models_dir).path


def model_home(ref: str, models_dir: str | Path = "Models") -> Path:
    """Where a model belongs under ``models_dir`` (its files may sit in a download cache instead)."""
    return locate(ref, models_dir).home


def st_dir(model_path: str | Path) -> Path:
    """Where the sentence-transformers conversion of a model goes: the same path with ``-st`` appended."""
    path = Path(model_path)
    return path if path.name.endswith("-st") else path.with_name(path.name + "-st")


@dataclass(frozen=True)
class Layout:
    """All artifact paths of one pipeline run."""

    dataset_dir: Path
    models_dir: Path
    results_dir: Path
    embedding_src: Path
    llm_dir: Path
    run_name: str
    # Where the embedding model belongs under models_dir; differs from embedding_src when found in a download cache.
    embedding_home: Path | None = None
    # The base reranker (empty: no reranker stage); model_files.RERANKER_FROM_EMBEDDING names the demo's.
    reranker_model: str = ""

    @classmethod
    def from_config(cls, cfg: RunSettings) -> Layout:
        models = Path(cfg.models_dir)
        return cls(
            dataset_dir=Path(cfg.dataset_dir),
            models_dir=models,
            results_dir=Path(cfg.results_dir),
            embedding_src=model_dir(cfg.embedding_model, models),
            llm_dir=model_dir(cfg.llm, models),
            run_name=cfg.run_name,
            embedding_home=model_home(cfg.embedding_model, models),
            reranker_model=cfg.reranker_model,
        )

    @property
    def pdf_dir(self) -> Path:
        return self.dataset_dir / "PDF"

    @property
    def chunks_dir(self) -> Path:
        return self.dataset_dir / "chunks"

    @property
    def train_chunks(self) -> Path:
        return self.chunks_dir / "train.jsonl"

    @property
    def val_chunks(self) -> Path:
        return self.chunks_dir / "val.jsonl"

    @property
    def datasets_dir(self) -> Path:
        return self.dataset_dir / "datasets"

    @property
    def train_dataset(self) -> Path:
        return self.datasets_dir / "train_dataset.json"

    @property
    def val_dataset(self) -> Path:
        return self.datasets_dir / "val_dataset.json"

    @property
    def embedding_st(self) -> Path:
        """The converted model: beside the source when it lives under models_dir, else in models_dir.

        A local model elsewhere (a read-only mount, a package's site-packages folder) is never written beside.
        """
        source = self.embedding_home or self.embedding_src  # a model found in a download cache belongs in models_dir
        try:
            source.resolve().relative_to(self.models_dir.resolve())
        except ValueError:
            return self.models_dir / st_dir(source).name
        return st_dir(source)

    @property
    def finetuned(self) -> Path:
        return self.models_dir / "model_outdir" / self.run_name

    @property
    def reranker_src(self) -> Path:
        """The reranker training starts from: a downloaded cross-encoder, or this run's fine-tuned embedding model."""
        if self.reranker_model == RERANKER_FROM_EMBEDDING:
            return self.finetuned
        return model_dir(self.reranker_model, self.models_dir)

    @property
    def finetuned_reranker(self) -> Path:
        return self.models_dir / "model_outdir" / f"{self.run_name}-reranker"

    @property
    def report(self) -> Path:
        return self.results_dir / "report.md"
