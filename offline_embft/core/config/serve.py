"""The ``serve`` section: the fine-tuned embedder (and reranker) behind vLLM's OpenAI-compatible servers."""

from __future__ import annotations

from dataclasses import dataclass

from offline_embft.core.config.fields import check, documented

DTYPES = ("auto", "float32", "float16", "bfloat16")
# `serve.reranker` value: serve the embedder alone even when the run trained a reranker.
NO_RERANKER = "none"


@dataclass
class ServeConfig:
    """vLLM OpenAI-compatible servers: /v1/embeddings for the embedder, /v1/rerank and /v1/score for the reranker."""

    model: str = documented("Embedding model directory to serve (empty: the run's fine-tuned model).", "")
    reranker: str = documented(
        f"Reranker (CrossEncoder) directory served beside it (empty: the run's fine-tuned reranker when there is "
        f"one; {NO_RERANKER}: no reranker).",
        "",
    )
    host: str = documented("Address both servers listen on (0.0.0.0: every interface of this machine).", "127.0.0.1")
    port: int = documented("Port of the embedder's server (/v1/embeddings, /v1/models).", 8000)
    reranker_port: int = documented(
        "Port of the reranker's server (/v1/rerank, /rerank, /v1/score, /v1/models).", 8001
    )
    api_key: str = documented(
        "Key clients must send (Authorization: Bearer KEY) on every path but /health (empty: no key). Passed to the "
        "servers by environment, never on their command line.",
        "",
    )
    served_name: str = documented("Model name clients send for the embedder (empty: run_name).", "")
    reranker_served_name: str = documented("Model name clients send for the reranker (empty: run_name-reranker).", "")
    dtype: str = documented(
        f"Weights' precision in vLLM: {', '.join(DTYPES)} (auto: vLLM's float16 on a GPU; float32 on a CPU, where "
        "float16 is emulated and 8.5x slower).",
        "auto",
    )
    max_model_len: int = documented(
        "Longest text in tokens the embedder accepts (0: the model's max_seq_length, where sentence-transformers "
        "cuts); longer texts get a 400 unless the client sends truncate_prompt_tokens.",
        0,
    )
    enforce_eager: bool = documented(
        "Skip vLLM's graph compilation and CUDA graphs: starts in about half the time, serves somewhat slower.", False
    )
    gpu_memory_utilization: float = documented(
        "Share of the GPU each server may take (0: 0.9 for one server, 0.45 each when the reranker shares the GPU).",
        0.0,
    )
    cpu_kv_cache_gib: int = documented(
        "CPU build only: memory in GiB each server reserves for its cache (vLLM's CPU default takes 92% of RAM).", 1
    )
    startup_timeout: int = documented("Seconds a server may take to answer /health before serve gives up.", 900)
    parity_texts: int = documented(
        "Validation texts (half questions, half passages) the parity check embeds through the server and with "
        "sentence-transformers; each cosine must be >= 0.999.",
        16,
    )
    log_dir: str = documented("Where the servers' logs go (empty: <results_dir>/serve).", "")
    vllm_args: list[str] = documented(
        "Extra arguments for both vLLM servers, e.g. ['--max-num-seqs', '64'] (vllm.entrypoints.openai.api_server).",
        factory=list,
    )

    def __post_init__(self) -> None:
        for key, port in (("port", self.port), ("reranker_port", self.reranker_port)):
            check(1 <= port <= 65535, f"serve.{key} must be a port number in 1..65535, got {port}")
        check(self.port != self.reranker_port, f"serve.port and serve.reranker_port are both {self.port}; pick two")
        check(self.dtype in DTYPES, f"serve.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        check(self.max_model_len >= 0, "serve.max_model_len must be >= 0 (0: the model's max_seq_length)")
        check(
            0.0 <= self.gpu_memory_utilization <= 1.0,
            f"serve.gpu_memory_utilization must be in [0, 1] (0: automatic), got {self.gpu_memory_utilization}",
        )
        check(self.cpu_kv_cache_gib >= 1, "serve.cpu_kv_cache_gib must be at least 1")
        check(self.startup_timeout >= 10, "serve.startup_timeout must be at least 10 seconds")
        check(self.parity_texts >= 2, "serve.parity_texts must be at least 2 (a question and a passage)")
        check(bool(self.host.strip()), "serve.host must not be empty (127.0.0.1: this machine only)")
