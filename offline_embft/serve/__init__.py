"""The serve stage: the fine-tuned embedder and reranker behind vLLM's OpenAI-compatible servers, with a parity check
against sentence-transformers before anything is called ready (see :mod:`offline_embft.serve.run`)."""
