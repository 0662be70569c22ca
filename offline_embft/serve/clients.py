"""The lines a user pastes into their RAG stack once the servers are ready: printed by ``serve``, tested in
tests/test_serve.py against a real server (openai, LangChain, LlamaIndex)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    """One served model: where it listens and the name clients must send."""

    url: str  # http://host:port, without /v1
    name: str
    max_tokens: int | None = None


def instructions(
    embedder: Endpoint, reranker: Endpoint | None, api_key: bool, query_prompt: str = "", passage_prompt: str = ""
) -> str:
    """The ready banner: endpoints, model names and client snippets (the key itself is never printed)."""
    key = '"<your serve.api_key>"' if api_key else '"EMPTY"'
    base = f"{embedder.url}/v1"
    lines = [
        "ready: the served models give what sentence-transformers gives (serve_check.json beside each model)",
        f"  embeddings  POST {base}/embeddings    model: {embedder.name}",
    ]
    if reranker is not None:
        lines.append(f"  rerank      POST {reranker.url}/v1/rerank  (also /rerank, /v1/score)  model: {reranker.name}")
    lines.append("  Ctrl-C stops the server(s).")
    if query_prompt:
        lines += ["", f"Prepend the query instruction to every QUESTION (not to passages): {query_prompt!r}"]
    if passage_prompt:
        lines.append(f"Prepend to every PASSAGE: {passage_prompt!r}")
    if embedder.max_tokens:
        lines += [
            "",
            f"Texts longer than {embedder.max_tokens} tokens are refused (400); sentence-transformers would cut them. "
            'To cut them the same way, send "truncate_prompt_tokens": -1 (openai client: extra_body=...), '
            "in rerank requests too.",
        ]
    q = f'"{query_prompt}" + ' if query_prompt else ""
    lines += [
        "",
        "# openai",
        "from openai import OpenAI",
        f'client = OpenAI(base_url="{base}", api_key={key})',
        f'vectors = client.embeddings.create(model="{embedder.name}", input=[{q}"你的问题"]).data',
        "",
        "# LlamaIndex (pip install llama-index-embeddings-openai-like)",
        "from llama_index.embeddings.openai_like import OpenAILikeEmbedding",
        f'embed_model = OpenAILikeEmbedding(model_name="{embedder.name}", api_base="{base}", api_key={key})',
        "",
        "# LangChain (pip install langchain-openai)",
        "from langchain_openai import OpenAIEmbeddings",
        f'embeddings = OpenAIEmbeddings(model="{embedder.name}", base_url="{base}", api_key={key}, '
        "check_embedding_ctx_length=False)",
        "",
        '# Dify / RAGFlow / FastGPT / MaxKB: model provider "OpenAI-API-compatible", type Text Embedding',
        f"  model name: {embedder.name}    API endpoint URL: {base}    API key: {key.strip(chr(34))}",
    ]
    if reranker is not None:
        lines += [
            f"  and type Rerank: model name: {reranker.name}    API endpoint URL: {reranker.url}/v1    "
            f"API key: {key.strip(chr(34))}",
            "",
            "# rerank over HTTP (Jina/Cohere style)",
            f"curl {reranker.url}/v1/rerank -H 'Content-Type: application/json'"
            + (" -H 'Authorization: Bearer $KEY'" if api_key else "")
            + f' -d \'{{"model": "{reranker.name}", "query": "问题", "documents": ["段落一", "段落二"]}}\'',
        ]
    return "\n".join(lines)
