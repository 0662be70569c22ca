"""An ASGI middleware loaded into each vLLM server (``--middleware offline_embft.serve.gate.Gate``).

Two holes of vLLM 0.32's OpenAI server, closed here:

- ``--api-key`` guards only paths under ``/v1``, ``/v2``, ``/inference`` and ``/cohere``
  (vllm/entrypoints/serve/middleware/authenticate.py): ``/rerank``, ``/score``, ``/tokenize`` and ``/pooling``
  answer anyone. The gate asks for the key on every path but ``/health``.
- An embedding model's server also answers ``/rerank`` and ``/score`` (with cosine similarities), and a reranker's
  ``/v1/embeddings``-like routes exist too: plausible numbers that mean nothing. The gate lets through only the
  routes of the server's role and answers 404 to the rest.

Configured by environment variables set by :mod:`offline_embft.serve.run` (the server's command line stays free of
the key, which ``ps`` would show to every user): ``OFFLINE_EMBFT_SERVE_ROUTES`` (comma-separated paths) and
``VLLM_API_KEY`` (vLLM reads the same variable).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from typing import Any

ROUTES_VAR = "OFFLINE_EMBFT_SERVE_ROUTES"
KEY_VAR = "VLLM_API_KEY"
OPEN_PATHS = ("/health",)
# Paths each role serves. Dify, RAGFlow and FastGPT call `<base>/rerank` (Jina/Cohere style); clients of vLLM itself
# call /v1/rerank, /v2/rerank or /v1/score.
ROUTES = {
    "embedder": ("/v1/models", "/v1/embeddings"),
    "reranker": ("/v1/models", "/v1/rerank", "/v2/rerank", "/rerank", "/v1/score", "/score"),
}


def _json(status: int, message: str) -> tuple[dict, bytes]:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": status}}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    return start, body


class Gate:
    """Pure ASGI middleware: the role's routes only, and the API key on all of them."""

    def __init__(self, app: Any) -> None:
        self.app = app
        routes = os.environ.get(ROUTES_VAR, "")
        self.routes = tuple(path for path in routes.split(",") if path) or None  # None: no role given, no filter
        key = os.environ.get(KEY_VAR, "")
        self.key_hash = hashlib.sha256(key.encode()).digest() if key else None

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        if self.key_hash is None:
            return True
        value = dict(headers).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = value.partition(" ")
        given = hashlib.sha256(token.strip().encode()).digest()
        return scheme.lower() == "bearer" and secrets.compare_digest(given, self.key_hash)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        path = scope["path"].removeprefix(scope.get("root_path", "")).rstrip("/") or "/"
        if path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if self.routes is not None and path not in self.routes:
            start, body = _json(404, f"{path} is not served here; this server answers {', '.join(self.routes)}")
        elif not self._authorized(scope.get("headers", [])):
            start, body = _json(401, "missing or wrong API key: send the header `Authorization: Bearer <key>`")
        else:
            await self.app(scope, receive, send)
            return
        await send(start)
        await send({"type": "http.response.body", "body": body})
