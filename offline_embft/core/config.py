"""Typed configuration: one dataclass per stage and one :class:`PipelineConfig` that holds them all.

Precedence, lowest to highest: dataclass defaults < YAML file (``--config``) < ``--set section.key=value`` < the
command's own flags. Each dataclass validates itself in ``__post_init__`` so a bad value fails with one line before
any model is loaded. Empty path fields are filled by :meth:`PipelineConfig.resolve` from the artifact layout in
:mod:`offline_embft.core.layout`, so a stage run on its own and a stage run by ``all`` read and write the same files.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import yaml

from offline_embft.core.config_values import build, coerce
from offline_embft.core.errors import UserError
from offline_embft.core.model_files import RERANKER_FROM_EMBEDDING

# The pipeline's stages, in order (pipeline.stages builds them; `doctor --stage` and `all --until` name them).
STAGES = ("convert", "ingest", "generate", "train", "train-reranker", "evaluate")
BACKENDS = ("vllm", "transformers", "openai", "ict")
CHUNKINGS = ("sentences", "units", "each-unit")
ENGINES = ("native", "llamaindex")
POOLINGS = ("cls", "mean")
LOSSES = ("mnrl", "cached-mnrl")
RERANKER_LOSSES = ("bce", "mnrl", "lambda", "listnet")
NEGATIVE_SOURCES = ("model", "bm25", "both")
EXTEND_VOCAB = ("auto", "on", "off")
HARD_NEGATIVE_SOURCES = ("model", "bm25", "both")
ROUNDTRIP_MODES = ("off", "bm25", "model", "both")


def _help(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field carrying its help text: the one place it is written (CLI flags, ``config --keys`` and
    docs/config.md all show it from here)."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def _check_count(value: str, key: str) -> None:
    """``auto`` or a whole number >= 1 (process counts: replicas, training processes)."""
    _check(
        value == "auto" or (value.isdigit() and int(value) >= 1),
        f"{key} must be auto or a whole number >= 1, got {value!r}",
    )


@dataclass
class IngestConfig:
    """Documents → clean Chinese text → token-aware chunks, split train/val by file."""

    input_dir: str = _help("Directory of PDF/DOCX/HTML/MD/TXT documents (searched recursively).", "")
    out_dir: str = _help("Output directory for train.jsonl, val.jsonl and stats.json.", "")
    tokenizer: str = _help("Embedding model directory whose tokenizer sizes the chunks (empty: characters).", "")
    tokenizer_strict: bool = _help(
        "Fail when the tokenizer directory is missing (set for an explicit tokenizer); otherwise size by characters.",
        False,
    )
    chunk_size: int = _help("Chunk size in tokens of the tokenizer (characters without one).", 300)
    chunk_overlap: int = _help("Overlap between consecutive chunks, in the same unit.", 30)
    chunking: str = _help(
        "each-unit: cut at the document's own units (第X章/节/条, 1.2.3 and Markdown/Word/HTML headings), one unit "
        "per chunk (fragments under 1/8 of chunk_size take in the next), units longer than chunk_size split by "
        "sentences with chunk_overlap; text without units is cut by sentences alone. units: the same, neighbours of "
        "one section packed up to chunk_size. sentences: pack sentences up to chunk_size (LlamaIndex "
        "SentenceSplitter).",
        "each-unit",
    )
    max_seq_length: int = _help("The embedding model's max_seq_length; longer chunks are counted as truncated.", 512)
    val_ratio: float = _help("Share of files (or of chunks, for a single file) held out for validation.", 0.3)
    seed: int = _help("Seed of the train/val split.", 42)
    min_chunk_chars: int = _help("Chunks with fewer characters than this are dropped as noise.", 20)
    unk_warn_rate: float = _help("Warn loudly when the tokenizer maps more than this share of tokens to UNK.", 0.05)

    def __post_init__(self) -> None:
        _check(self.chunk_size > 0, f"ingest.chunk_size must be positive, got {self.chunk_size}")
        _check(
            0 <= self.chunk_overlap < self.chunk_size,
            f"ingest.chunk_overlap must be in [0, chunk_size), got {self.chunk_overlap}",
        )
        _check(0.0 <= self.val_ratio < 1.0, f"ingest.val_ratio must be in [0, 1), got {self.val_ratio}")
        _check(
            self.chunking in CHUNKINGS,
            f"ingest.chunking must be one of {', '.join(CHUNKINGS)}, got {self.chunking!r}",
        )


@dataclass
class GenerateConfig:
    """Chunks → questions from a local LLM → EmbeddingQAFinetuneDataset JSON."""

    backend: str = _help(f"Question generator: one of {', '.join(BACKENDS)}.", "vllm")
    engine: str = _help("native (batched, cached, cleaned) or llamaindex (generate_qa_embedding_pairs).", "native")
    model: str = _help("LLM: a Qwen3 preset name (e.g. Qwen3-8B) or a local model directory.", "")
    base_url: str = _help(
        "OpenAI-compatible server URL inside your network (backend openai); several, comma-separated, share the "
        "requests (one per `vllm serve`).",
        "",
    )
    api_key: str = _help("API key for the openai backend, if the server wants one.", "EMPTY")
    questions_per_chunk: int = _help(
        "Questions to keep per chunk (0: sized by the corpus, 3 under 1000 chunks, 2 under 5000, else 1).", 0
    )
    batch_size: int = _help("Prompts sent to the engine in one call.", 256)
    prompt_file: str = _help(
        "A prompt template file with {context} and {num_questions} (empty: built-in Chinese).", ""
    )
    max_new_tokens: int = _help("Max tokens the LLM may write per answer.", 256)
    temperature: float = _help("Sampling temperature (Qwen3 non-thinking card: 0.7).", 0.7)
    top_p: float = _help("Nucleus sampling (Qwen3 non-thinking card: 0.8).", 0.8)
    top_k: int = _help("Top-k sampling (Qwen3 card: 20).", 20)
    min_p: float = _help("Min-p sampling (Qwen3 card: 0).", 0.0)
    presence_penalty: float = _help("Presence penalty (0-2; raise it if the model repeats itself).", 0.0)
    max_retries: int = _help("Extra attempts, with another seed, for chunks left without a valid question.", 2)
    seed: int = _help("Sampling seed.", 42)
    tensor_parallel_size: int = _help("GPUs per model for vLLM (0: from the preset).", 0)
    gpu_memory_utilization: float = _help("Share of GPU memory vLLM may take (0: from the preset).", 0.0)
    max_model_len: int = _help(
        "Context length (prompt + answer); longer chunks are shortened in the prompt to fit "
        "(0: the preset's for vLLM, the model's own for transformers).",
        0,
    )
    dtype: str = _help("Model dtype: auto, bfloat16, float16, float32.", "auto")
    quantization: str = _help("vLLM quantization (awq, fp8, ...; empty: from the checkpoint).", "")
    device: str = _help("Device for the transformers backend: auto, cpu, cuda.", "auto")
    concurrency: int = _help("Concurrent requests for the openai backend.", 16)
    timeout: float = _help("Seconds per request for the openai backend.", 120.0)
    cache_dir: str = _help("Answer cache directory (empty: beside the output).", "")
    models_dir: str = _help("Where preset LLMs (e.g. Qwen3-8B) live (empty: the pipeline's models_dir).", "")
    request_retries: int = _help("Retries per request for the openai backend (connection errors, 429, 5xx).", 3)
    min_question_chars: int = _help("Questions shorter than this (characters) are dropped.", 5)
    max_question_chars: int = _help("Questions longer than this (characters) are dropped.", 150)
    near_copy_ratio: float = _help(
        "Drop a question when this share of it is copied verbatim from the chunk (1: never).", 0.9
    )
    ict_keep_prob: float = _help("Backend ict: chance the query sentence stays in its positive passage.", 0.1)
    data_parallel_size: str = _help(
        "Engine replicas, each in its own process answering a shard of the prompts: auto (visible GPUs ÷ "
        "tensor_parallel_size, 1 without GPUs) or N (N > 1 also works on CPU, sharing out the cores).",
        "auto",
    )
    ray_address: str = _help(
        "Generate through Ray Data actors: empty (off), local (start Ray here), auto (join the running cluster) "
        "or ray://host:10001. Needs `pip install 'offline-embft[ray]'`.",
        "",
    )
    roundtrip: str = _help(
        "Round-trip filter: keep a question only when its own chunk ranks in the top roundtrip_k of the dataset's "
        "chunks for bm25, model (the base embedding model), both (their rank fusion), or off. Training sets only.",
        "off",
    )
    roundtrip_k: int = _help("Round-trip filter: the question's chunk must rank within this many.", 3)
    roundtrip_model: str = _help(
        "Round-trip filter: embedding model directory (empty: the pipeline's converted base model).", ""
    )

    def __post_init__(self) -> None:
        _check_count(self.data_parallel_size, "generate.data_parallel_size")
        _check(
            self.ray_address in ("", "local", "auto") or self.ray_address.startswith("ray://"),
            f"generate.ray_address must be empty, local, auto or ray://host:port, got {self.ray_address!r}",
        )
        _check(
            self.backend in BACKENDS, f"generate.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}"
        )
        _check(self.engine in ENGINES, f"generate.engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        _check(self.questions_per_chunk >= 0, "generate.questions_per_chunk must be >= 0 (0: sized by the corpus)")
        _check(
            self.roundtrip in ROUNDTRIP_MODES,
            f"generate.roundtrip must be one of {', '.join(ROUNDTRIP_MODES)}, got {self.roundtrip!r}",
        )
        _check(self.roundtrip_k >= 1, "generate.roundtrip_k must be at least 1")
        _check(self.batch_size >= 1, "generate.batch_size must be at least 1")
        _check(self.max_new_tokens >= 8, "generate.max_new_tokens must be at least 8")
        self._check_sampling()
        _check(self.max_retries >= 0, "generate.max_retries must be >= 0")
        _check(self.request_retries >= 0, "generate.request_retries must be >= 0")
        _check(self.concurrency >= 1, "generate.concurrency must be at least 1")
        _check(
            1 <= self.min_question_chars <= self.max_question_chars,
            "generate.min_question_chars must be >= 1 and <= generate.max_question_chars",
        )
        _check(0.0 < self.near_copy_ratio <= 1.0, "generate.near_copy_ratio must be in (0, 1]")
        _check(0.0 <= self.ict_keep_prob <= 1.0, "generate.ict_keep_prob must be in [0, 1]")

    def _check_sampling(self) -> None:
        """vLLM's own ranges (vllm 0.33 vllm/sampling_params.py:638-693, _verify_args), checked before any model loads.

        vLLM raises on these only when the first batch is built, minutes after loading the model.
        """
        _check(
            -2.0 <= self.presence_penalty <= 2.0,
            f"generate.presence_penalty must be in [-2, 2], got {self.presence_penalty}",
        )
        _check(0.0 <= self.temperature <= 2.0, f"generate.temperature must be in [0, 2], got {self.temperature}")
        _check(0.0 < self.top_p <= 1.0, f"generate.top_p must be in (0, 1], got {self.top_p}")
        _check(self.top_k >= -1, f"generate.top_k must be 0 or -1 (off) or at least 1, got {self.top_k}")
        _check(0.0 <= self.min_p <= 1.0, f"generate.min_p must be in [0, 1], got {self.min_p}")
        _check(
            0.0 <= self.gpu_memory_utilization <= 1.0,
            f"generate.gpu_memory_utilization must be in (0, 1] (0: the preset's), got {self.gpu_memory_utilization}",
        )
        _check(self.tensor_parallel_size >= 0, "generate.tensor_parallel_size must be >= 0 (0: the preset's)")
        _check(
            self.max_model_len == 0 or self.max_model_len > self.max_new_tokens,
            f"generate.max_model_len ({self.max_model_len}) must exceed generate.max_new_tokens "
            f"({self.max_new_tokens}): the prompt and the answer share it",
        )


@dataclass
class ConvertConfig:
    """Any Hugging Face encoder → sentence-transformers layout (Transformer → Pooling → Normalize)."""

    model: str = _help("Source model directory (Hugging Face layout, or already sentence-transformers).", "")
    out_dir: str = _help("Output sentence-transformers directory.", "")
    pooling: str = _help("Pooling: cls (BCE, BGE) or mean (MiniLM, m3e). Empty: keep the model's own.", "")
    max_seq_length: int = _help("max_seq_length saved with the model (BCE: 512).", 512)
    normalize: bool = _help("Append a Normalize module (cosine similarity as dot product).", True)

    def __post_init__(self) -> None:
        _check(self.pooling in ("", *POOLINGS), f"convert.pooling must be cls or mean, got {self.pooling!r}")
        _check(self.max_seq_length > 0, "convert.max_seq_length must be positive")


@dataclass
class TrainConfig:
    """Fine-tune a sentence-transformers model with MultipleNegativesRankingLoss, done right."""

    train_file: str = _help("Training dataset (EmbeddingQAFinetuneDataset JSON).", "")
    val_file: str = _help("Validation dataset for in-training evaluation (empty: none).", "")
    model: str = _help("Base sentence-transformers model directory (run convert first for raw HF models).", "")
    out_dir: str = _help("Output model directory (the best checkpoint by val ndcg@10).", "")
    epochs: int = _help("Training epochs.", 3)
    batch_size: int = _help("Pairs per batch: every other passage in the batch is a negative.", 32)
    mini_batch_size: int = _help("Mini-batch for cached-mnrl (GPU memory bound, not the effective batch).", 16)
    lr: float = _help("Peak learning rate.", 1e-4)
    warmup_ratio: float = _help("Share of steps for linear warmup.", 0.1)
    weight_decay: float = _help("AdamW weight decay.", 0.01)
    loss: str = _help("mnrl or cached-mnrl (big effective batches on small GPUs).", "mnrl")
    matryoshka_dims: list[int] = _help("Wrap the loss in MatryoshkaLoss with these dims (empty: off).", factory=list)
    hard_negatives: int = _help(
        "Hard negatives mined per query (0: in-batch negatives only; configs/default.yaml mines 1: +0.017 ndcg@10 "
        "over three seeds for about twice the training time, docs/train.md).",
        0,
    )
    hard_negative_source: str = _help("Where hard negatives come from: model, bm25 or both (rank-fused).", "both")
    extend_vocab: str = _help("Add corpus characters the tokenizer maps to UNK: auto, on, off.", "auto")
    vocab_draws: int = _help(
        "When extend_vocab adds tokens: draw their random rows this many times and keep the draw the untrained model "
        "ranks the validation set best with (1: one draw; 8 measured no better on average, docs/quality.md).",
        1,
    )
    max_seq_length: int = _help("Truncate passages to this many tokens (0: keep the model's).", 0)
    query_prompt: str = _help("Instruction prepended to queries (e.g. BGE's Chinese instruction).", "")
    passage_prompt: str = _help("Prefix prepended to passages.", "")
    precision: str = _help("auto (bf16/fp16 on GPU, fp32 on CPU), bf16, fp16 or fp32.", "auto")
    seed: int = _help("Seed for reproducible runs.", 42)
    eval_steps: int = _help("Evaluate every N steps (0: once per epoch).", 0)
    resume: bool = _help("Resume from the last checkpoint in <out_dir>.checkpoints/ if there is one.", True)
    keep_checkpoints: bool = _help("Keep <out_dir>.checkpoints/ after a successful run (default: delete it).", False)
    nproc: str = _help(
        "Training processes on this machine (`torchrun --nproc_per_node`, launched by train/all/make): auto (visible "
        "GPUs, 1 without GPUs) or N (N > 1 works on CPU with gloo). train.batch_size stays the per-device batch.",
        "auto",
    )
    weight_ensemble: bool = _help(
        "WiSE-FT: save alpha*fine-tuned + (1-alpha)*base weights, alpha chosen on the validation set.",
        False,
    )
    fusion: bool = _help(
        "Choose the weight of BM25 fusion on the validation set and save it beside the model as fusion.json (not on "
        "ict pseudo-questions, which misjudge BM25: evaluate --questions chooses it on real ones).",
        True,
    )

    def __post_init__(self) -> None:
        _check_count(self.nproc, "train.nproc")
        _check(self.loss in LOSSES, f"train.loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        _check(
            self.extend_vocab in EXTEND_VOCAB, f"train.extend_vocab must be auto, on or off, got {self.extend_vocab!r}"
        )
        _check(self.epochs >= 1, "train.epochs must be at least 1")
        _check(self.batch_size >= 2, "train.batch_size must be at least 2 (in-batch negatives need company)")
        _check(self.lr > 0, "train.lr must be positive")
        _check(self.hard_negatives >= 0, "train.hard_negatives must be >= 0")
        _check(self.vocab_draws >= 1, "train.vocab_draws must be at least 1")
        _check(
            self.hard_negative_source in HARD_NEGATIVE_SOURCES,
            "train.hard_negative_source must be model, bm25 or both",
        )
        _check(self.precision in ("auto", "bf16", "fp16", "fp32"), "train.precision must be auto, bf16, fp16 or fp32")


@dataclass
class TrainRerankerConfig:
    """Fine-tune a cross-encoder reranker on the same questions, negatives mined by the fine-tuned embedding model."""

    train_file: str = _help("Training dataset (EmbeddingQAFinetuneDataset JSON).", "")
    val_file: str = _help(
        "Validation dataset: best checkpoint by ndcg@10 of reranking the retriever's top (empty: none).", ""
    )
    model: str = _help(
        "Base reranker: a CrossEncoder directory, a Hugging Face encoder, or a sentence-transformers embedding model "
        "(its encoder gets a fresh one-score head).",
        "",
    )
    out_dir: str = _help("Output CrossEncoder directory (the best checkpoint by validation).", "")
    retriever: str = _help(
        "Embedding model that mines the hard negatives and the validation candidates (pipeline: the fine-tuned one; "
        "empty: BM25 only).",
        "",
    )
    negatives: int = _help("Hard negatives per question.", 7)
    negative_source: str = _help(
        "Where negatives come from: model (the retriever), bm25 or both (rank-fused).", "model"
    )
    loss: str = _help(
        "bce (binary cross-entropy over positive and negatives), mnrl (pick the positive among negatives and "
        "in-batch passages), lambda (LambdaLoss, listwise) or listnet.",
        "lambda",
    )
    epochs: int = _help("Training epochs.", 2)
    batch_size: int = _help(
        "Questions per batch, each with its positive and negatives ((question, passage) pairs for loss bce).", 8
    )
    lr: float = _help("Peak learning rate.", 2e-5)
    warmup_ratio: float = _help("Share of steps for linear warmup.", 0.1)
    weight_decay: float = _help("AdamW weight decay.", 0.01)
    max_length: int = _help("Truncate (question, passage) pairs to this many tokens (0: keep the model's).", 512)
    rerank_top: int = _help("Validation: rerank this many passages retrieved per question (as evaluate does).", 20)
    blend: bool = _help(
        "Choose on validation how much of the retriever's order to keep beside the reranker's (rerank_fusion.json; "
        "never worse than either alone on validation).",
        True,
    )
    extend_vocab: str = _help("Add corpus characters the tokenizer maps to UNK: auto, on, off.", "auto")
    query_prompt: str = _help("Query instruction the retriever expects (pipeline: train.query_prompt).", "")
    passage_prompt: str = _help("Passage prefix the retriever expects (pipeline: train.passage_prompt).", "")
    precision: str = _help("auto (bf16/fp16 on GPU, fp32 on CPU), bf16, fp16 or fp32.", "auto")
    seed: int = _help("Seed for reproducible runs.", 42)
    eval_steps: int = _help("Evaluate every N steps (0: once per epoch).", 0)
    resume: bool = _help("Resume from the last checkpoint in <out_dir>.checkpoints/ if there is one.", True)
    keep_checkpoints: bool = _help("Keep <out_dir>.checkpoints/ after a successful run (default: delete it).", False)

    def __post_init__(self) -> None:
        _check(
            self.loss in RERANKER_LOSSES,
            f"train_reranker.loss must be one of {', '.join(RERANKER_LOSSES)}, got {self.loss!r}",
        )
        _check(
            self.negative_source in NEGATIVE_SOURCES,
            f"train_reranker.negative_source must be model, bm25 or both, got {self.negative_source!r}",
        )
        _check(self.negatives >= 1, "train_reranker.negatives must be at least 1 (a reranker learns from contrasts)")
        _check(self.epochs >= 1, "train_reranker.epochs must be at least 1")
        _check(self.batch_size >= 1, "train_reranker.batch_size must be at least 1")
        _check(self.lr > 0, "train_reranker.lr must be positive")
        _check(self.max_length >= 0, "train_reranker.max_length must be >= 0")
        _check(self.rerank_top >= 2, "train_reranker.rerank_top must be at least 2")
        _check(
            self.extend_vocab in EXTEND_VOCAB,
            f"train_reranker.extend_vocab must be auto, on or off, got {self.extend_vocab!r}",
        )
        _check(
            self.precision in ("auto", "bf16", "fp16", "fp32"),
            "train_reranker.precision must be auto, bf16, fp16 or fp32",
        )


@dataclass
class EvaluateConfig:
    """Base vs fine-tuned vs BM25 (and hybrid) on one dataset, with a report."""

    dataset: str = _help("Evaluation dataset (EmbeddingQAFinetuneDataset JSON).", "")
    models: list[str] = _help("Model directories to compare; the first is the reference for deltas.", factory=list)
    bm25: bool = _help("Add a BM25 baseline (jieba segmentation).", True)
    hybrid: bool = _help("Add reciprocal-rank fusion of BM25 with each model.", False)
    out_dir: str = _help("Results directory (metrics.csv/json, report.md/png, predictions).", "")
    batch_size: int = _help("Encoding batch size.", 64)
    query_prompt: str = _help("Instruction prepended to queries (must match training).", "")
    passage_prompt: str = _help("Prefix prepended to passages (must match training).", "")
    rrf_k: int = _help("Reciprocal-rank fusion constant.", 60)
    reranker: str = _help(
        "Fine-tuned reranker (CrossEncoder directory): adds 'retriever → reranker' rows for the last model and its "
        "hybrid (empty: none).",
        "",
    )
    base_reranker: str = _help("The reranker before fine-tuning, reranking the same rows beside it (empty: none).", "")
    rerank_top: int = _help("Passages of each retriever's ranking that the reranker re-orders.", 20)
    rerank_batch_size: int = _help("(question, passage) pairs per reranker forward pass.", 32)
    full_corpus: bool = _help(
        "Pipeline: search the validation questions among ALL chunks (training chunks as distractors), the index users "
        "will have; these are the headline numbers, the validation-chunks-only numbers go beside them.",
        True,
    )
    distractors: list[str] = _help(
        "Chunks JSONL files whose chunks join the corpus as distractors (the pipeline: the training chunks).",
        factory=list,
    )
    questions: str = _help(
        "CSV of real questions: `question` and `passage` (a snippet of the expected text) or `source` + `page`.", ""
    )
    chunks: list[str] = _help(
        "Chunks JSONL files the real questions are mapped to and searched in (the pipeline: train and val chunks).",
        factory=list,
    )

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "evaluate.batch_size must be at least 1")
        _check(self.rerank_top >= 2, f"evaluate.rerank_top must be at least 2, got {self.rerank_top}")
        _check(self.rerank_batch_size >= 1, "evaluate.rerank_batch_size must be at least 1")
        _check(self.rrf_k >= 1, f"evaluate.rrf_k must be at least 1, got {self.rrf_k}")


@dataclass
class PipelineConfig:
    """The whole run: which models, where artifacts live, and each stage's settings."""

    llm: str = _help(
        "LLM for question generation: ModelScope id (Qwen/Qwen3-8B), preset or local path.", "Qwen/Qwen3-8B"
    )
    embedding_model: str = _help(
        "Base embedding model: ModelScope id, local path, or package:NAME for a model shipped in a Python package.",
        "maidalun1020/bce-embedding-base_v1",
    )
    reranker_model: str = _help(
        "Base reranker (cross-encoder): ModelScope id, local path, package:NAME, or "
        f"{RERANKER_FROM_EMBEDDING} (a cross-encoder initialised from this run's fine-tuned embedding model). "
        "Empty: no reranker stage (configs/default.yaml: maidalun1020/bce-reranker-base_v1).",
        "",
    )
    run_name: str = _help("Name of the fine-tuned model directory under Models/model_outdir/.", "finetuned")
    models_dir: str = _help("Where models live (downloads, converted, fine-tuned).", "Models")
    dataset_dir: str = _help("Where documents, chunks and datasets live.", "Dataset")
    results_dir: str = _help("Where evaluation results and the report go.", "results")
    ingest: IngestConfig = field(default_factory=IngestConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    train_reranker: TrainRerankerConfig = field(default_factory=TrainRerankerConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def resolve(self) -> PipelineConfig:
        """Fill every empty path from the artifact layout (:func:`offline_embft.core.layout.fill_paths`); returns
        self."""
        from offline_embft.core.layout import fill_paths

        fill_paths(self)
        return self


# ---------------------------------------------------------------------------------------------------------------
# Loading, overriding, saving


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a pipeline config from YAML (or defaults when ``path`` is None) and apply ``section.key=value`` overrides.

    Raises:
        UserError: the file is missing or unreadable, a key is unknown, or a value has the wrong type.
    """
    data: dict[str, Any] = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file {path} not found; pass an existing YAML file (see configs/)")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"override {item!r} must look like section.key=value, e.g. train.lr=2e-5")
        *parents, leaf = key.strip().split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value) if value.strip() else ""
    return build(PipelineConfig, data, "")


def apply_overrides(section: Any, **values: Any) -> Any:
    """Set each non-None value on a stage config (command-line flags win over YAML), then re-validate."""
    hints = typing.get_type_hints(type(section))
    for name, value in values.items():
        if value is None:
            continue
        if name not in hints:
            raise KeyError(f"{type(section).__name__} has no field {name}")
        setattr(section, name, coerce(value, hints[name], name))
    section.__post_init__()
    return section


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict of a config dataclass (for YAML/JSON output); paths given as ``Path`` become strings."""
    return dataclasses.asdict(cfg, dict_factory=lambda items: {key: _plain(value) for key, value in items})


def _plain(value: Any) -> Any:
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def save_config(cfg: Any, path: str | Path) -> Path:
    """Save the resolved config of a stage beside its output, atomically, as YAML."""
    from offline_embft.core.io import write_text

    text = yaml.safe_dump(to_dict(cfg), allow_unicode=True, sort_keys=False)
    return write_text(path, text)
