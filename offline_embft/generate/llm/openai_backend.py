"""An OpenAI-compatible server inside the user's own network (``vllm serve``, SGLang, Xinference, llama.cpp ...).

Requests of a batch go out concurrently through a bounded thread pool; the ``openai`` client retries connection
errors, resets, timeouts, 429 (honouring retry-after) and 5xx with backoff. A prompt that still fails, a prompt the
server refuses as longer than its context, a body that is not a chat completion or one without an answer comes back
as None (retried by the generate stage with another seed, then reported); a server that is gone, a wrong API key,
or a request rejected outright stops the run with one line.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from llama_index.core.bridge.pydantic import PrivateAttr

from offline_embft.core.errors import UserError
from offline_embft.generate.llm.base import (
    CHAT_TEMPLATE_KWARGS,
    PROMPT_TOO_LONG,
    BatchLLM,
    EngineDied,
    Refused,
    Sampling,
)
from offline_embft.generate.llm.presets import resolve_model
from offline_embft.generate.llm.prompt_budget import PromptBudget
from offline_embft.generate.llm.transformers_backend import prompt_seed

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 429}
# vLLM's 400 for a prompt longer than max_model_len (vllm/renderers/params.py, 0.33); SGLang and llama.cpp say the
# same words.
CONTEXT_LENGTH_ERROR = "maximum context length"


def normalize_base_url(base_url: str) -> str:
    """``http://host:8000`` → ``http://host:8000/v1`` (what vLLM serves); a full endpoint URL loses its endpoint.

    Raises:
        UserError: the URL is empty or not http(s).
    """
    url = base_url.strip().rstrip("/")
    if not url:
        raise UserError("backend openai needs --base-url, e.g. http://gpu-server:8000/v1 where `vllm serve` runs")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise UserError(f"--base-url {base_url!r} is not an http(s) URL; e.g. http://gpu-server:8000/v1")
    for suffix in ("/chat/completions", "/completions"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    if urlparse(url).path in ("", "/"):
        url += "/v1"
    return url


class OpenAILLM(BatchLLM):
    """Chat completions from an OpenAI-compatible server, a batch at a time over a bounded pool of requests."""

    backend = "openai"
    needs_base_url = True
    runs_replicas = False
    spreads_work = (
        "already spreads requests over its servers (list several in --base-url, comma-separated, or raise "
        "generate.concurrency)"
    )

    @classmethod
    def from_config(cls, cfg: Any, template: str) -> BatchLLM:
        """One server, or :class:`OpenAIServers` sharing each batch when ``cfg.base_url`` lists several."""
        urls = [url.strip() for url in cfg.base_url.split(",") if url.strip()]
        if not urls:
            raise UserError("backend openai needs --base-url, e.g. http://gpu-server:8000/v1 where `vllm serve` runs")
        sampling = Sampling.from_config(cfg)
        servers = [
            cls(
                url,
                cfg.model,
                sampling,
                api_key=cfg.api_key,
                concurrency=cfg.concurrency,
                timeout=cfg.timeout,
                request_retries=cfg.request_retries,
                tokenizer_dir=_local_tokenizer(cfg),
                max_model_len=cfg.max_model_len,
            )
            for url in urls
        ]
        return servers[0] if len(servers) == 1 else OpenAIServers(servers)

    _client: Any = PrivateAttr(default=None)
    _pool: Any = PrivateAttr(default=None)
    _url: str = PrivateAttr(default="")
    _concurrency: int = PrivateAttr(default=16)
    _last_failure: str = PrivateAttr(default="")

    def __init__(
        self,
        base_url: str,
        model: str,
        sampling: Sampling,
        *,
        api_key: str = "EMPTY",
        concurrency: int = 16,
        timeout: float = 120.0,
        request_retries: int = 3,
        tokenizer_dir: str | Path | None = None,
        max_model_len: int = 0,
    ) -> None:
        from openai import OpenAI

        url = normalize_base_url(base_url)
        client = OpenAI(base_url=url, api_key=api_key or "EMPTY", timeout=timeout, max_retries=request_retries)
        served = _served_models(client, url)
        model = _pick_model(model, list(served) if served is not None else None, url)
        super().__init__(model_name=model, sampling=sampling, fingerprint=model)
        self._client = client
        self._url = url
        self._concurrency = concurrency
        # The same token budget as the local backends, when the model's tokenizer is on this machine and the context
        # is known (vLLM lists it per model: ModelCard.max_model_len, vllm 0.33 entrypoints/serve/engine/
        # protocol.py:105-113). Otherwise an over-long prompt is refused by the server (HTTP 400) and counted.
        context = max_model_len or (served or {}).get(model) or 0
        if tokenizer_dir and context:
            from transformers import AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
            except (OSError, ValueError) as exc:
                logger.warning("cannot count prompt tokens with %s (%s); the server checks them", tokenizer_dir, exc)
            else:
                self._budget = PromptBudget(tokenizer, context, sampling.max_tokens)
                logger.info("counting prompt tokens with %s's tokenizer, max_model_len %d", tokenizer_dir, context)

    def settings(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model_name, "base_url": self._url}

    def _ask(self, prompt: str, sampling: Sampling) -> str | Refused | None:
        """The answer to one prompt; None when the server could not answer it (connection, timeout, 5xx, a bad body);
        :class:`Refused` when it refused this prompt alone (over the context length)."""
        import openai

        extra: dict[str, Any] = {"min_p": sampling.min_p, "chat_template_kwargs": dict(CHAT_TEMPLATE_KWARGS)}
        if sampling.top_k > 0:
            extra["top_k"] = sampling.top_k
        try:
            response = self._client.chat.completions.create(
                model=self.model_name,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=sampling.max_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                presence_penalty=sampling.presence_penalty,
                # The run's seed and the prompt, as the local backends seed each request: an answer depends on its
                # prompt and the seed only, and equals what `--backend vllm` writes for them.
                seed=None if sampling.seed is None else prompt_seed(sampling.seed, prompt),
                extra_body=extra,
            )
        except openai.APIConnectionError as exc:  # includes timeouts; the client already retried
            logger.debug("request to %s failed: %s", self._url, exc)
            self._last_failure = _root_cause(exc)
            return None
        except openai.APIStatusError as exc:
            if exc.status_code in (401, 403):
                raise UserError(f"the server at {self._url} rejected the API key; set generate.api_key") from None
            if exc.status_code >= 500 or exc.status_code in RETRYABLE_STATUS:
                logger.debug("request to %s failed: %s", self._url, exc)
                self._last_failure = f"HTTP {exc.status_code}: {_message(exc)}"
                return None
            message = _message(exc)
            if exc.status_code == 400 and CONTEXT_LENGTH_ERROR in message:
                # One over-long prompt fails alone (vLLM checks each request); the chunk is counted as failed.
                logger.warning("the server at %s refused a prompt: %s", self._url, message)
                return Refused(f"{PROMPT_TOO_LONG}: {message}")
            raise UserError(
                f"the server at {self._url} rejected the request ({exc.status_code}: {message}); "
                "check --model and the server's log"
            ) from None
        except (openai.APIResponseValidationError, ValueError) as exc:  # a body that is not a chat completion
            logger.warning("the server at %s sent a malformed answer: %s", self._url, str(exc).splitlines()[0][:200])
            return None
        return _answer_text(response)

    def _generate(self, prompts: list[str], sampling: Sampling) -> list[str | Refused | None]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix="openai-request")
        results = list(self._pool.map(lambda prompt: self._ask(prompt, sampling), prompts))
        unreachable = sum(result is None for result in results)
        if unreachable == len(results):
            # The server is gone or broken: the run stops (answers so far are cached) with the last cause seen.
            last = f"; the last: {self._last_failure}" if self._last_failure else ""
            raise EngineDied(
                f"every request to {self._url} failed (connection errors, timeouts or 5xx even after retries{last}); "
                "check the server's log, or lower generate.concurrency / raise generate.timeout"
            )
        if unreachable:
            logger.warning(
                "%d of %d requests to %s failed; they will be retried", unreachable, len(results), self._url
            )
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._client is not None:
            self._client.close()


def _answer_text(response: Any) -> str | None:
    """The answer in a chat completion; None when the server sent none (the prompt is retried, then reported).

    With vLLM's reasoning parser a response cut inside the think block has ``content`` null and the text in
    ``reasoning`` (``reasoning_content`` before vLLM 0.10): it comes back as an unclosed think block, so the question
    filter counts it as ``thinking_unclosed`` and the failure report shows what the model wrote.
    """
    if not response.choices:
        logger.debug("a response without choices: %s", response)
        return None
    message = response.choices[0].message
    if message.content is not None:
        return message.content
    reasoning = getattr(message, "reasoning", None) or getattr(message, "reasoning_content", None)
    return f"<think>\n{reasoning}" if reasoning else None


def _root_cause(exc: BaseException) -> str:
    """The innermost cause of a connection failure, e.g. ``ConnectError: [Errno 111] Connection refused``."""
    while exc.__cause__ is not None and exc.__cause__ is not exc:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"]).splitlines()[0][:300]
        if isinstance(inner, str):
            return inner[:200]
    return str(exc).splitlines()[0][:200]


def _served_models(client: Any, url: str) -> dict[str, int | None] | None:
    """Model names the server lists, with the context length it gives each when it says (None: no /models)."""
    import openai

    try:
        return {m.id: _context_of(m) for m in client.models.list()}
    except openai.APIConnectionError as exc:
        raise UserError(
            f"cannot reach the OpenAI-compatible server at {url} ({type(exc).__name__}); start it "
            "(e.g. `vllm serve Models/Qwen/Qwen3-8B --served-model-name Qwen3-8B`) or fix --base-url"
        ) from None
    except openai.AuthenticationError:
        raise UserError(f"the server at {url} rejected the API key; set generate.api_key") from None
    except openai.APIStatusError:
        return None


def _context_of(card: Any) -> int | None:
    """``max_model_len`` of a /models entry (a vLLM field; other servers leave it out)."""
    value = getattr(card, "max_model_len", None) or (getattr(card, "model_extra", None) or {}).get("max_model_len")
    return int(value) if isinstance(value, int | float) and value > 0 else None


def _pick_model(requested: str, served: list[str] | None, url: str) -> str:
    """The served model name to use: the requested one, matched by name, or the only one the server has."""
    if served is None:
        if not requested:
            raise UserError(f"the server at {url} does not list its models; pass --model with the served model name")
        return requested
    if not served:
        raise UserError(f"the server at {url} serves no model; check its log")
    if requested in served:
        return requested
    wanted = requested.rstrip("/").rsplit("/", 1)[-1].lower()
    for name in served:
        if name.rstrip("/").rsplit("/", 1)[-1].lower() == wanted:
            return name
    if len(served) == 1:
        if requested:
            logger.warning("the server at %s serves %r, not %r; using %r", url, served[0], requested, served[0])
        return served[0]
    raise UserError(
        f"the server at {url} serves {', '.join(served)}, not {requested!r}; pass --model with one of them"
    )


class OpenAIServers(BatchLLM):
    """Several OpenAI-compatible servers of the same model (one ``vllm serve`` per GPU group), sharing each batch.

    Prompt ``i`` of a batch goes to server ``i mod N``; the servers answer their parts at the same time, each with
    its own bounded pool of requests. The seed travels with every request, so an answer does not depend on which
    server wrote it.

    Raises:
        UserError: the servers serve different models.
    """

    backend = "openai"

    _servers: list[OpenAILLM] = PrivateAttr(default_factory=list)
    _pool: Any = PrivateAttr(default=None)

    def __init__(self, servers: list[OpenAILLM]) -> None:
        names = {server.model_name for server in servers}
        if len(names) > 1:
            urls = ", ".join(f"{s._url} serves {s.model_name}" for s in servers)
            raise UserError(f"the --base-url servers serve different models ({urls}); serve the same model on each")
        first = servers[0]
        super().__init__(model_name=first.model_name, sampling=first.sampling, fingerprint=first.model_name)
        self._servers = servers
        self._budget = first.prompt_budget  # the same model everywhere: one budget fits the prompts for all

    def settings(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model_name, "base_url": [s._url for s in self._servers]}

    def _generate(self, prompts: list[str], sampling: Sampling) -> list[str | None]:
        count = len(self._servers)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="openai-server")
        parts = list(self._pool.map(lambda i: self._servers[i]._generate(prompts[i::count], sampling), range(count)))
        answers: list[str | None] = [None] * len(prompts)
        for i, part in enumerate(parts):
            answers[i::count] = part
        return answers

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for server in self._servers:
            server.close()


def _local_tokenizer(cfg: Any) -> str | None:
    """The served model's directory on this machine, if it is here: its tokenizer counts the prompts' tokens."""
    try:
        return str(resolve_model(cfg.model, cfg.models_dir).path) if cfg.model else None
    except UserError:
        return None
