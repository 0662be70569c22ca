"""The ``generate`` section: chunks → questions from a local LLM (backend, sampling, scale-out, filters)."""

from __future__ import annotations

from dataclasses import dataclass

from offline_embft.core.config.fields import check, check_count, documented

BACKENDS = ("vllm", "transformers", "openai", "ict")
ENGINES = ("native", "llamaindex")
ROUNDTRIP_MODES = ("off", "bm25", "model", "both")


@dataclass
class GenerateConfig:
    """Chunks → questions from a local LLM → EmbeddingQAFinetuneDataset JSON."""

    backend: str = documented(f"Question generator: one of {', '.join(BACKENDS)}.", "vllm")
    engine: str = documented(
        "native (batched, cached, cleaned) or llamaindex (generate_qa_embedding_pairs).", "native"
    )
    model: str = documented("LLM: a Qwen3 preset name (e.g. Qwen3-8B) or a local model directory.", "")
    base_url: str = documented(
        "OpenAI-compatible server URL inside your network (backend openai); several, comma-separated, share the "
        "requests (one per `vllm serve`).",
        "",
    )
    api_key: str = documented("API key for the openai backend, if the server wants one.", "EMPTY")
    questions_per_chunk: int = documented(
        "Questions to keep per chunk (0: sized by the corpus, 3 under 1000 chunks, 2 under 5000, else 1).", 0
    )
    batch_size: int = documented("Prompts sent to the engine in one call.", 256)
    prompt_file: str = documented(
        "A prompt template file with {context} and {num_questions} (empty: built-in Chinese).", ""
    )
    max_new_tokens: int = documented("Max tokens the LLM may write per answer.", 256)
    temperature: float = documented("Sampling temperature (Qwen3 non-thinking card: 0.7).", 0.7)
    top_p: float = documented("Nucleus sampling (Qwen3 non-thinking card: 0.8).", 0.8)
    top_k: int = documented("Top-k sampling (Qwen3 card: 20).", 20)
    min_p: float = documented("Min-p sampling (Qwen3 card: 0).", 0.0)
    presence_penalty: float = documented("Presence penalty (0-2; raise it if the model repeats itself).", 0.0)
    max_retries: int = documented("Extra attempts, with another seed, for chunks left without a valid question.", 2)
    seed: int = documented("Sampling seed.", 42)
    tensor_parallel_size: int = documented("GPUs per model for vLLM (0: from the preset).", 0)
    gpu_memory_utilization: float = documented("Share of GPU memory vLLM may take (0: from the preset).", 0.0)
    max_model_len: int = documented(
        "Context length (prompt + answer); longer chunks are shortened in the prompt to fit "
        "(0: the preset's for vLLM, the model's own for transformers).",
        0,
    )
    dtype: str = documented("Model dtype: auto, bfloat16, float16, float32.", "auto")
    quantization: str = documented("vLLM quantization (awq, fp8, ...; empty: from the checkpoint).", "")
    enforce_eager: bool = documented(
        "vLLM: run eagerly, without torch.compile or CUDA graphs (starts several times faster, decodes slower).",
        False,
    )
    device: str = documented("Device for the transformers backend: auto, cpu, cuda.", "auto")
    concurrency: int = documented("Concurrent requests for the openai backend.", 16)
    timeout: float = documented("Seconds per request for the openai backend.", 120.0)
    cache_dir: str = documented("Answer cache directory (empty: beside the output).", "")
    models_dir: str = documented("Where preset LLMs (e.g. Qwen3-8B) live (empty: the pipeline's models_dir).", "")
    request_retries: int = documented("Retries per request for the openai backend (connection errors, 429, 5xx).", 3)
    min_question_chars: int = documented("Questions shorter than this (characters) are dropped.", 5)
    max_question_chars: int = documented("Questions longer than this (characters) are dropped.", 150)
    near_copy_ratio: float = documented(
        "Drop a question when this share of it is copied verbatim from the chunk (1: never).", 0.9
    )
    ict_keep_prob: float = documented("Backend ict: chance the query sentence stays in its positive passage.", 0.1)
    data_parallel_size: str = documented(
        "Engine replicas, each in its own process answering a shard of the prompts: auto (visible GPUs ÷ "
        "tensor_parallel_size, 1 without GPUs) or N (N > 1 also works on CPU, sharing out the cores).",
        "auto",
    )
    ray_address: str = documented(
        "Generate through Ray Data actors: empty (off), local (start Ray here), auto (join the running cluster) "
        "or ray://host:10001. Needs `pip install 'offline-embft[ray]'`.",
        "",
    )
    roundtrip: str = documented(
        "Round-trip filter: keep a question only when its own chunk ranks in the top roundtrip_k of the dataset's "
        "chunks for bm25, model (the base embedding model), both (their rank fusion), or off. Training sets only.",
        "off",
    )
    roundtrip_k: int = documented("Round-trip filter: the question's chunk must rank within this many.", 3)
    roundtrip_model: str = documented(
        "Round-trip filter: embedding model directory (empty: the pipeline's converted base model).", ""
    )

    def __post_init__(self) -> None:
        check_count(self.data_parallel_size, "generate.data_parallel_size")
        check(
            self.ray_address in ("", "local", "auto") or self.ray_address.startswith("ray://"),
            f"generate.ray_address must be empty, local, auto or ray://host:port, got {self.ray_address!r}",
        )
        check(self.backend in BACKENDS, f"generate.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        check(self.engine in ENGINES, f"generate.engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        check(self.questions_per_chunk >= 0, "generate.questions_per_chunk must be >= 0 (0: sized by the corpus)")
        check(
            self.roundtrip in ROUNDTRIP_MODES,
            f"generate.roundtrip must be one of {', '.join(ROUNDTRIP_MODES)}, got {self.roundtrip!r}",
        )
        check(self.roundtrip_k >= 1, "generate.roundtrip_k must be at least 1")
        check(self.batch_size >= 1, "generate.batch_size must be at least 1")
        check(self.max_new_tokens >= 8, "generate.max_new_tokens must be at least 8")
        self._check_sampling()
        check(self.max_retries >= 0, "generate.max_retries must be >= 0")
        check(self.request_retries >= 0, "generate.request_retries must be >= 0")
        check(self.concurrency >= 1, "generate.concurrency must be at least 1")
        check(
            1 <= self.min_question_chars <= self.max_question_chars,
            "generate.min_question_chars must be >= 1 and <= generate.max_question_chars",
        )
        check(0.0 < self.near_copy_ratio <= 1.0, "generate.near_copy_ratio must be in (0, 1]")
        check(0.0 <= self.ict_keep_prob <= 1.0, "generate.ict_keep_prob must be in [0, 1]")

    def _check_sampling(self) -> None:
        """vLLM's own ranges (vllm 0.33 vllm/sampling_params.py:638-693, _verify_args), checked before any model loads.

        vLLM raises on these only when the first batch is built, minutes after loading the model.
        """
        check(
            -2.0 <= self.presence_penalty <= 2.0,
            f"generate.presence_penalty must be in [-2, 2], got {self.presence_penalty}",
        )
        check(0.0 <= self.temperature <= 2.0, f"generate.temperature must be in [0, 2], got {self.temperature}")
        check(0.0 < self.top_p <= 1.0, f"generate.top_p must be in (0, 1], got {self.top_p}")
        check(self.top_k >= -1, f"generate.top_k must be 0 or -1 (off) or at least 1, got {self.top_k}")
        check(0.0 <= self.min_p <= 1.0, f"generate.min_p must be in [0, 1], got {self.min_p}")
        check(
            0.0 <= self.gpu_memory_utilization <= 1.0,
            f"generate.gpu_memory_utilization must be in (0, 1] (0: the preset's), got {self.gpu_memory_utilization}",
        )
        check(self.tensor_parallel_size >= 0, "generate.tensor_parallel_size must be >= 0 (0: the preset's)")
        check(
            self.max_model_len == 0 or self.max_model_len > self.max_new_tokens,
            f"generate.max_model_len ({self.max_model_len}) must exceed generate.max_new_tokens "
            f"({self.max_new_tokens}): the prompt and the answer share it",
        )
