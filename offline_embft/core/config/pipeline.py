"""The whole run's config: :class:`PipelineConfig` holds the models, the artifact directories and one section per
stage (each section lives in its own module beside this one); :meth:`PipelineConfig.resolve` fills the sections'
empty paths from the artifact layout."""

from __future__ import annotations

from dataclasses import dataclass, field

from offline_embft.core.config.convert import ConvertConfig
from offline_embft.core.config.evaluate import EvaluateConfig
from offline_embft.core.config.fields import RETENTION_MARGIN, documented
from offline_embft.core.config.general import GeneralConfig
from offline_embft.core.config.generate import GenerateConfig
from offline_embft.core.config.ingest import IngestConfig
from offline_embft.core.config.serve import ServeConfig
from offline_embft.core.config.train import TrainConfig
from offline_embft.core.config.train_reranker import TrainRerankerConfig
from offline_embft.core.layout import Layout
from offline_embft.core.model_files import RERANKER_FROM_EMBEDDING

# The pipeline's stages, in order (pipeline.stages builds them; `doctor --stage` and `all --until` name them).
STAGES = ("convert", "ingest", "generate", "train", "train-reranker", "evaluate")


@dataclass
class PipelineConfig:
    """The whole run: which models, where artifacts live, and each stage's settings."""

    llm: str = documented(
        "LLM for question generation: ModelScope id (Qwen/Qwen3-8B), preset or local path.", "Qwen/Qwen3-8B"
    )
    embedding_model: str = documented(
        "Base embedding model: ModelScope id, local path, or package:NAME for a model shipped in a Python package.",
        "maidalun1020/bce-embedding-base_v1",
    )
    reranker_model: str = documented(
        "Base reranker (cross-encoder): ModelScope id, local path, package:NAME, or "
        f"{RERANKER_FROM_EMBEDDING} (a cross-encoder initialised from this run's fine-tuned embedding model). "
        "Empty: no reranker stage (configs/default.yaml: maidalun1020/bce-reranker-base_v1).",
        "",
    )
    run_name: str = documented("Name of the fine-tuned model directory under Models/model_outdir/.", "finetuned")
    models_dir: str = documented("Where models live (downloads, converted, fine-tuned).", "Models")
    dataset_dir: str = documented("Where documents, chunks and datasets live.", "Dataset")
    results_dir: str = documented("Where evaluation results and the report go.", "results")
    ingest: IngestConfig = field(default_factory=IngestConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    train_reranker: TrainRerankerConfig = field(default_factory=TrainRerankerConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    general: GeneralConfig = field(default_factory=GeneralConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def resolve(self) -> PipelineConfig:
        """Fill every empty path of every section from the artifact layout (:class:`offline_embft.core.layout.Layout`),
        so a stage run alone and a stage run by ``all`` read and write the same files; returns self.

        Idempotent: ``resolve()`` may run twice.
        """
        _fill_paths(self, Layout.from_config(self))
        return self


def _fill_paths(cfg: PipelineConfig, layout: Layout) -> None:
    cfg.ingest.input_dir = cfg.ingest.input_dir or str(layout.pdf_dir)
    cfg.ingest.out_dir = cfg.ingest.out_dir or str(layout.chunks_dir)
    # A tokenizer named by the user must exist; the embedding model's (maybe not yet converted) is a soft default.
    default_tokenizer = str(layout.embedding_st)
    named = cfg.ingest.tokenizer not in ("", default_tokenizer)  # resolve() may run twice: stay idempotent
    cfg.ingest.tokenizer_strict = cfg.ingest.tokenizer_strict or named
    cfg.ingest.tokenizer = cfg.ingest.tokenizer or default_tokenizer
    cfg.generate.model = cfg.generate.model or cfg.llm
    cfg.generate.models_dir = cfg.generate.models_dir or cfg.models_dir
    cfg.generate.roundtrip_model = cfg.generate.roundtrip_model or str(layout.embedding_st)
    cfg.convert.model = cfg.convert.model or str(layout.embedding_src)
    cfg.convert.out_dir = cfg.convert.out_dir or str(layout.embedding_st)
    cfg.train.train_file = cfg.train.train_file or str(layout.train_dataset)
    cfg.train.val_file = cfg.train.val_file or str(layout.val_dataset)
    cfg.train.model = cfg.train.model or str(layout.embedding_st)
    cfg.train.out_dir = cfg.train.out_dir or str(layout.finetuned)
    cfg.evaluate.dataset = cfg.evaluate.dataset or str(layout.val_dataset)
    cfg.evaluate.models = cfg.evaluate.models or [str(layout.embedding_st), str(layout.finetuned)]
    cfg.evaluate.out_dir = cfg.evaluate.out_dir or str(layout.results_dir)
    if cfg.evaluate.full_corpus and not cfg.evaluate.distractors:
        cfg.evaluate.distractors = [str(layout.train_chunks)]
    cfg.evaluate.chunks = cfg.evaluate.chunks or [str(layout.train_chunks), str(layout.val_chunks)]
    cfg.evaluate.query_prompt = cfg.evaluate.query_prompt or cfg.train.query_prompt
    cfg.evaluate.passage_prompt = cfg.evaluate.passage_prompt or cfg.train.passage_prompt
    _fill_general(cfg)
    _fill_serve(cfg, layout)
    if cfg.reranker_model:
        rerank = cfg.train_reranker
        rerank.train_file = rerank.train_file or cfg.train.train_file
        rerank.val_file = rerank.val_file or cfg.train.val_file
        rerank.model = rerank.model or str(layout.reranker_src)
        rerank.out_dir = rerank.out_dir or str(layout.finetuned_reranker)
        rerank.retriever = rerank.retriever or cfg.train.out_dir
        rerank.query_prompt = rerank.query_prompt or cfg.train.query_prompt
        rerank.passage_prompt = rerank.passage_prompt or cfg.train.passage_prompt
        cfg.evaluate.reranker = cfg.evaluate.reranker or rerank.out_dir
        # A head-less start (the fine-tuned embedding model) has no "before" reranker worth a row.
        if cfg.reranker_model != RERANKER_FROM_EMBEDDING:
            cfg.evaluate.base_reranker = cfg.evaluate.base_reranker or str(layout.reranker_src)


def _fill_serve(cfg: PipelineConfig, layout: Layout) -> None:
    """What serve serves by default: the run's fine-tuned model under the run's name (the reranker, which exists only
    once train-reranker ran, is chosen by the serve stage)."""
    cfg.serve.model = cfg.serve.model or str(layout.finetuned)
    cfg.serve.served_name = cfg.serve.served_name or cfg.run_name
    cfg.serve.reranker_served_name = cfg.serve.reranker_served_name or f"{cfg.run_name}-reranker"
    cfg.serve.log_dir = cfg.serve.log_dir or str(layout.results_dir / "serve")


def _fill_general(cfg: PipelineConfig) -> None:
    """The general sets (names → <dataset_dir>/general/<name>) and their margin, into evaluate and — only when the
    merge that reads them is on, so that configuring a general set does not make `all` retrain — into train."""
    from offline_embft.core.beir import resolve_general

    sets = [str(resolve_general(ref, cfg.dataset_dir)) for ref in cfg.general.sets]
    sections = [cfg.evaluate, *([cfg.train] if cfg.train.weight_ensemble else [])]
    for section in sections:
        section.general = section.general or sets
        if section.retention_margin == RETENTION_MARGIN:
            section.retention_margin = cfg.general.margin
