"""The ``offline-embft`` command line: one command per stage, plus ``all``, ``download`` and ``doctor``.

No logic lives here: each command builds the stage config (defaults < ``--config`` YAML < ``--set`` < flags) and
calls the stage's ``run``; the flags' shared parts are in :mod:`offline_embft.cli_options`. Heavy libraries are
imported inside the commands so ``--help`` is instant, and the offline environment is set (by importing the package)
before any of them.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from offline_embft.cli_options import (
    Backend,
    Chunking,
    ConfigOpt,
    Engine,
    ExtendVocab,
    Loss,
    Pooling,
    RerankerLoss,
    SetOpt,
    StageName,
)
from offline_embft.cli_options import arg as _arg
from offline_embft.cli_options import guard as _guard
from offline_embft.cli_options import load as _load
from offline_embft.cli_options import opt as _opt
from offline_embft.cli_options import value as _value
from offline_embft.core import offline
from offline_embft.core.config import (
    STAGES,
    ConvertConfig,
    EvaluateConfig,
    GenerateConfig,
    IngestConfig,
    TrainConfig,
    TrainRerankerConfig,
)
from offline_embft.core.config.serve import ServeConfig
from offline_embft.core.errors import UserError

offline.enable()

app = typer.Typer(
    name="offline-embft",
    help=(
        "Fine-tune embedding models for Chinese RAG, fully offline.\n\n"
        "Pipeline: ingest (documents → chunks) → generate (local LLM → questions) → convert (HF → "
        "sentence-transformers) → train (MNRL) → train-reranker (cross-encoder) → evaluate (vs base model and BM25). "
        "`offline-embft all --config configs/default.yaml` runs everything; `doctor` checks a machine first."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

logger = logging.getLogger("offline_embft")


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only.")] = False,
) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # Third-party libraries are chatty at INFO; keep our own messages readable.
    for name in ("httpx", "urllib3", "sentence_transformers", "transformers", "jieba", "modelscope", "filelock"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


@app.command()
def ingest(
    input_dir: Annotated[Optional[Path], _arg(IngestConfig, "input_dir")] = None,
    out: Annotated[Optional[Path], _opt(IngestConfig, "out_dir", "--out", "-o")] = None,
    tokenizer: Annotated[Optional[str], _opt(IngestConfig, "tokenizer")] = None,
    chunk_size: Annotated[Optional[int], _opt(IngestConfig, "chunk_size")] = None,
    chunk_overlap: Annotated[Optional[int], _opt(IngestConfig, "chunk_overlap")] = None,
    chunking: Annotated[Optional[Chunking], _opt(IngestConfig, "chunking")] = None,
    val_ratio: Annotated[Optional[float], _opt(IngestConfig, "val_ratio")] = None,
    seed: Annotated[Optional[int], _opt(IngestConfig, "seed")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Documents → clean Chinese text → token-aware chunks → train.jsonl / val.jsonl / stats.json (split by file)."""

    def body() -> None:
        from offline_embft.core.config import apply_overrides
        from offline_embft.ingest import run as stage

        cfg = _load(config, set_).ingest
        apply_overrides(
            cfg,
            input_dir=input_dir and str(input_dir),
            out_dir=out and str(out),
            tokenizer=tokenizer,
            tokenizer_strict=True if tokenizer else None,
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
            chunking=chunking.value if chunking else None,
            val_ratio=val_ratio,
            seed=seed,
        )
        stage.run(cfg)

    _guard(body)


@app.command()
def generate(
    chunks: Annotated[
        Optional[Path], typer.Argument(help="Chunks JSONL (default: both train and val chunks of the config).")
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output dataset JSON (needs CHUNKS).")] = None,
    backend: Annotated[Optional[Backend], _opt(GenerateConfig, "backend")] = None,
    model: Annotated[Optional[str], _opt(GenerateConfig, "model")] = None,
    base_url: Annotated[Optional[list[str]], _opt(GenerateConfig, "base_url")] = None,
    questions_per_chunk: Annotated[Optional[int], _opt(GenerateConfig, "questions_per_chunk")] = None,
    batch_size: Annotated[Optional[int], _opt(GenerateConfig, "batch_size")] = None,
    prompt: Annotated[Optional[Path], _opt(GenerateConfig, "prompt_file", "--prompt")] = None,
    engine: Annotated[Optional[Engine], _opt(GenerateConfig, "engine")] = None,
    data_parallel_size: Annotated[Optional[str], _opt(GenerateConfig, "data_parallel_size")] = None,
    ray_address: Annotated[Optional[str], _opt(GenerateConfig, "ray_address")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Chunks → questions from a local LLM (batched, cleaned, cached) → EmbeddingQAFinetuneDataset JSON."""

    def body() -> None:
        from offline_embft.core.config import apply_overrides
        from offline_embft.core.layout import Layout
        from offline_embft.generate import run as stage

        pipeline = _load(config, set_)
        cfg = apply_overrides(
            pipeline.generate,
            backend=_value(backend),
            model=model,
            base_url=base_url and ",".join(base_url),
            questions_per_chunk=questions_per_chunk,
            batch_size=batch_size,
            prompt_file=prompt and str(prompt),
            engine=_value(engine),
            data_parallel_size=data_parallel_size,
            ray_address=ray_address,
        )
        if chunks is not None:
            stage.run(cfg, chunks, out or stage.dataset_path_for(chunks))
            return
        if out is not None:
            raise UserError("--out needs a CHUNKS file; without one, generate writes the config's train and val sets")
        stage.run_splits(cfg, Layout.from_config(pipeline))

    _guard(body)


@app.command()
def convert(
    model_dir: Annotated[Optional[Path], _arg(ConvertConfig, "model")] = None,
    out: Annotated[Optional[Path], _opt(ConvertConfig, "out_dir", "--out", "-o")] = None,
    pooling: Annotated[Optional[Pooling], _opt(ConvertConfig, "pooling")] = None,
    max_seq_length: Annotated[Optional[int], _opt(ConvertConfig, "max_seq_length")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """HF encoder → sentence-transformers (Transformer → Pooling → Normalize), verified against raw transformers."""

    def body() -> None:
        from offline_embft.convert import run as stage
        from offline_embft.core.config import apply_overrides

        pipeline = _load(config, set_)
        if model_dir is not None and out is None:
            # A model named on the command line converts to its own -st directory, never over the config's.
            pipeline.embedding_model, pipeline.convert.model, pipeline.convert.out_dir = str(model_dir), "", ""
            pipeline.resolve()
        cfg = apply_overrides(
            pipeline.convert,
            model=model_dir and str(model_dir),
            out_dir=out and str(out),
            pooling=_value(pooling),
            max_seq_length=max_seq_length,
        )
        stage.run(cfg)

    _guard(body)


@app.command()
def train(
    train_file: Annotated[Optional[Path], _arg(TrainConfig, "train_file")] = None,
    model: Annotated[Optional[Path], _opt(TrainConfig, "model")] = None,
    out: Annotated[Optional[Path], _opt(TrainConfig, "out_dir", "--out", "-o")] = None,
    val: Annotated[Optional[Path], _opt(TrainConfig, "val_file", "--val")] = None,
    epochs: Annotated[Optional[int], _opt(TrainConfig, "epochs")] = None,
    batch_size: Annotated[Optional[int], _opt(TrainConfig, "batch_size")] = None,
    lr: Annotated[Optional[float], _opt(TrainConfig, "lr")] = None,
    loss: Annotated[Optional[Loss], _opt(TrainConfig, "loss")] = None,
    hard_negatives: Annotated[Optional[int], _opt(TrainConfig, "hard_negatives")] = None,
    extend_vocab: Annotated[Optional[ExtendVocab], _opt(TrainConfig, "extend_vocab")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Fine-tune with MultipleNegativesRankingLoss (no-duplicate batches, best checkpoint, resumable)."""

    def body() -> None:
        from offline_embft.core.config import apply_overrides, load_config
        from offline_embft.train import embedder as stage

        loaded = load_config(config, set_)
        asked_val = loaded.train.val_file  # before the pipeline layout fills it in
        cfg = apply_overrides(
            loaded.resolve().train,
            train_file=train_file and str(train_file),
            model=model and str(model),
            out_dir=out and str(out),
            val_file=val and str(val),
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            loss=_value(loss),
            hard_negatives=hard_negatives,
            extend_vocab=_value(extend_vocab),
        )
        if train_file is not None and val is None:
            # A dataset named on the command line trains on its own: validation only when asked for (--val or the
            # config), never the pipeline's val_dataset.json that the layout fills in.
            cfg.val_file = asked_val
        from offline_embft.train import distributed as torchrun

        nproc = 1 if torchrun.is_launched() else torchrun.resolve_nproc(cfg)
        if nproc > 1:
            stage.load_inputs(cfg)  # bad input: one line here, not the same error from every process
            torchrun.launch_train(cfg, nproc)
            return
        stage.run(cfg)

    _guard(body)


@app.command(name="train-reranker")
def train_reranker(
    train_file: Annotated[Optional[Path], _arg(TrainRerankerConfig, "train_file")] = None,
    model: Annotated[Optional[Path], _opt(TrainRerankerConfig, "model")] = None,
    out: Annotated[Optional[Path], _opt(TrainRerankerConfig, "out_dir", "--out", "-o")] = None,
    val: Annotated[Optional[Path], _opt(TrainRerankerConfig, "val_file", "--val")] = None,
    retriever: Annotated[Optional[Path], _opt(TrainRerankerConfig, "retriever")] = None,
    negatives: Annotated[Optional[int], _opt(TrainRerankerConfig, "negatives")] = None,
    loss: Annotated[Optional[RerankerLoss], _opt(TrainRerankerConfig, "loss")] = None,
    epochs: Annotated[Optional[int], _opt(TrainRerankerConfig, "epochs")] = None,
    batch_size: Annotated[Optional[int], _opt(TrainRerankerConfig, "batch_size")] = None,
    lr: Annotated[Optional[float], _opt(TrainRerankerConfig, "lr")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Fine-tune the reranker (cross-encoder) on the same questions, negatives mined by the fine-tuned embedder."""

    def body() -> None:
        from offline_embft.core.config import apply_overrides, load_config
        from offline_embft.train import reranker as stage

        loaded = load_config(config, set_)
        asked_val = loaded.train_reranker.val_file  # before the pipeline layout fills it in
        pipeline = loaded.resolve()
        if model is None and not pipeline.reranker_model:
            raise UserError("no reranker configured (reranker_model is empty); pass --model RERANKER_DIR")
        cfg = apply_overrides(
            pipeline.train_reranker,
            train_file=train_file and str(train_file),
            model=model and str(model),
            out_dir=out and str(out),
            val_file=val and str(val),
            retriever=retriever and str(retriever),
            negatives=negatives,
            loss=_value(loss),
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
        )
        if train_file is not None and val is None:
            cfg.val_file = asked_val  # standalone, as `train`: validation only when asked for
        stage.run(cfg)

    _guard(body)


@app.command()
def evaluate(
    dataset: Annotated[Optional[Path], _arg(EvaluateConfig, "dataset")] = None,
    model: Annotated[Optional[list[Path]], _opt(EvaluateConfig, "models", "--model", "-m")] = None,
    bm25: Annotated[Optional[bool], _opt(EvaluateConfig, "bm25", "--bm25/--no-bm25")] = None,
    hybrid: Annotated[Optional[bool], _opt(EvaluateConfig, "hybrid", "--hybrid/--no-hybrid")] = None,
    out: Annotated[Optional[Path], _opt(EvaluateConfig, "out_dir", "--out", "-o")] = None,
    reranker: Annotated[Optional[Path], _opt(EvaluateConfig, "reranker")] = None,
    base_reranker: Annotated[Optional[Path], _opt(EvaluateConfig, "base_reranker")] = None,
    rerank_top: Annotated[Optional[int], _opt(EvaluateConfig, "rerank_top")] = None,
    questions: Annotated[Optional[Path], _opt(EvaluateConfig, "questions")] = None,
    chunks: Annotated[Optional[list[Path]], _opt(EvaluateConfig, "chunks", "--chunks")] = None,
    distractors: Annotated[Optional[list[Path]], _opt(EvaluateConfig, "distractors", "--distractors")] = None,
    general: Annotated[Optional[list[Path]], _opt(EvaluateConfig, "general", "--general")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Compare models (and BM25, hybrids, rerankers) on a dataset → metrics.csv/json, predictions, report.md/png."""

    def body() -> None:
        from offline_embft.core.config import apply_overrides
        from offline_embft.evaluate import run as stage

        cfg = _load(config, set_).evaluate
        if model:
            # An ad-hoc comparison of the models given: the pipeline's own reranker joins only when asked for.
            from offline_embft.core.config import load_config

            unresolved = load_config(config, set_).evaluate
            cfg.reranker, cfg.base_reranker = unresolved.reranker, unresolved.base_reranker
        apply_overrides(
            cfg,
            dataset=dataset and str(dataset),
            models=model and [str(m) for m in model],
            bm25=bm25,
            hybrid=hybrid,
            out_dir=out and str(out),
            reranker=reranker and str(reranker),
            base_reranker=base_reranker and str(base_reranker),
            rerank_top=rerank_top,
            questions=questions and str(questions),
            chunks=chunks and [str(c) for c in chunks],
            distractors=distractors and [str(d) for d in distractors],
            general=general and [str(g) for g in general],
        )
        stage.run(cfg)

    _guard(body)


@app.command()
def download(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """(Connected machine) Fetch the config's LLM and embedding model from ModelScope into Models/, and its general
    retrieval sets (general.sets) into Dataset/general/."""

    def body() -> None:
        from offline_embft.convert import download as stage
        from offline_embft.generate.llm import backend_class

        cfg = _load(config, set_)
        # The backend says whether its LLM must be on disk (vllm, transformers) or not (openai: served; ict: none).
        stage.download(cfg, llm_weights=backend_class(cfg.generate.backend).needs_local_weights)

    _guard(body)


@app.command()
def doctor(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    stage: Annotated[
        Optional[list[StageName]],
        typer.Option(
            help="Check only what this stage needs (repeatable; `all --until` passes the stages it will run). "
            "Default: every check, for the whole pipeline."
        ),
    ] = None,
) -> None:
    """Check this machine against a config: GPU, vLLM, models, disk, offline env, tokenizer coverage."""

    def body() -> None:
        from offline_embft import doctor as checks

        ok = checks.run(_load(config, set_), stages=[_value(name) for name in stage or []])
        if not ok:
            raise typer.Exit(1)

    _guard(body)


@app.command(name="all")
def run_all(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option(help="Redo every stage even if its output is fresh.")] = False,
    until: Annotated[Optional[str], typer.Option(help=f"Stop after this stage ({', '.join(STAGES)}).")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", "-n", help="Print the commands that would run; run nothing (make -n).")
    ] = False,
) -> None:
    """Run every stage in order (or up to --until), skipping fresh ones; GPU stages run in separate processes."""

    def body() -> None:
        from offline_embft import pipeline

        cfg = _load(config, set_)
        if dry_run:
            for line in pipeline.dry_run(cfg, config_path=config, overrides=set_ or [], force=force, until=until):
                typer.echo(line)
            return
        pipeline.run(cfg, config_path=config, overrides=set_ or [], force=force, until=until)
        if until in (None, "evaluate"):
            typer.echo(pipeline.summary(cfg))

    _guard(body)


@app.command()
def summary(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the latest report (the metrics table and verdict) and where its files are."""

    def body() -> None:
        from offline_embft import pipeline

        typer.echo(pipeline.summary(_load(config, set_)))

    _guard(body)


@app.command(name="config")
def show_config(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    keys: Annotated[bool, typer.Option("--keys", help="List every config key with its default and help.")] = False,
) -> None:
    """Print the resolved config (defaults + YAML + overrides) as YAML, or with --keys every key and its help."""

    def body() -> None:
        import yaml

        from offline_embft.core.config import to_dict
        from offline_embft.core.config.help import keys_markdown

        if keys:
            typer.echo(keys_markdown(), nl=False)
            return
        typer.echo(yaml.safe_dump(to_dict(_load(config, set_)), allow_unicode=True, sort_keys=False))

    _guard(body)


@app.command()
def serve(
    model: Annotated[Optional[Path], _opt(ServeConfig, "model")] = None,
    reranker: Annotated[Optional[str], _opt(ServeConfig, "reranker")] = None,
    host: Annotated[Optional[str], _opt(ServeConfig, "host")] = None,
    port: Annotated[Optional[int], _opt(ServeConfig, "port")] = None,
    reranker_port: Annotated[Optional[int], _opt(ServeConfig, "reranker_port")] = None,
    api_key: Annotated[Optional[str], _opt(ServeConfig, "api_key")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Serve the fine-tuned embedder (and reranker) on vLLM's OpenAI-compatible API, after a parity check; Ctrl-C
    stops."""

    def body() -> None:
        from offline_embft.core.config import apply_overrides
        from offline_embft.serve import run as stage

        cfg = _load(config, set_)
        apply_overrides(
            cfg.serve,
            model=model and str(model),
            reranker=reranker,
            host=host,
            port=port,
            reranker_port=reranker_port,
            api_key=api_key,
        )
        stage.run(cfg, echo=typer.echo)

    _guard(body)


def run() -> None:
    """Console-script entry point."""
    app(prog_name="offline-embft")


if __name__ == "__main__":
    run()
    sys.exit(0)
