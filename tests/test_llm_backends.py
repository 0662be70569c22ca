"""The backends at their boundaries: a tiny real Qwen3 (transformers), a faithful fake of vLLM's API, a local
OpenAI-compatible HTTP server, and the no-LLM ict generator. No GPU, no network beyond 127.0.0.1."""

from __future__ import annotations

import json
import logging
import socket
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fake_vllm as fake_vllm_module
import pytest
from tiny_qwen import build_tiny_qwen

from offline_embft.core.config import GenerateConfig, PipelineConfig
from offline_embft.core.errors import UserError
from offline_embft.generate.llm import BatchLLM, create_llm, find_preset, resolve_model
from offline_embft.generate.llm.ict_backend import mask_positive, pick_sentences
from offline_embft.generate.llm.openai_backend import normalize_base_url
from offline_embft.generate.llm.transformers_backend import prompt_seed
from offline_embft.generate.run import load_template, render

TEXTS = [
    "公司是企业法人，有独立的法人财产，享有法人财产权。公司以其全部财产对公司的债务承担责任。",
    "有限责任公司的股东以其认缴的出资额为限对公司承担责任。",
    "股份有限公司的股东以其认购的股份为限对公司承担责任。",
    "公司的合法权益受法律保护，不受侵犯。",
    "公司从事经营活动，应当遵守法律法规，遵守社会公德、商业道德，诚实守信，接受政府和社会公众的监督。",
]


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> Path:
    return build_tiny_qwen(tmp_path_factory.mktemp("models") / "Qwen3-0.6B", [*TEXTS, load_template()])


def _cfg(**overrides: Any) -> GenerateConfig:
    return GenerateConfig(**{"max_new_tokens": 12, "batch_size": 4, **overrides})


# ----------------------------------------------------------------------------------------------------------------
# transformers: the real thing, on a tiny random Qwen3


def test_transformers_backend_batches_with_left_padding_and_thinking_off(tiny_qwen, monkeypatch):
    llm = create_llm(_cfg(backend="transformers", model=str(tiny_qwen), device="cpu"))
    assert llm.model_name == "Qwen3-0.6B"  # the preset matched by folder name
    tokenizer = llm._tokenizer
    rendered = llm._render("你好？")
    assert rendered.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # enable_thinking=False reached it

    calls: list[Any] = []
    real_generate = llm._model.generate

    def spy(**kwargs):
        calls.append(kwargs)
        return real_generate(**kwargs)

    monkeypatch.setattr(llm._model, "generate", spy)
    prompts = [render(load_template(), text, 1) for text in TEXTS]
    answers = llm.complete_batch(prompts, seed=7, raw=True)  # the engine's text: a random model writes no questions

    assert len(calls) == 1  # one engine call for the whole batch
    ids = calls[0]["input_ids"]
    assert ids.shape[0] == len(prompts)
    assert calls[0]["max_new_tokens"] == 12
    # Seeded sampling is greedy over Gumbel-perturbed logits, one generator per prompt, after the usual warpers.
    warpers = [type(p).__name__ for p in calls[0]["logits_processor"]]
    assert not calls[0]["do_sample"] and warpers[:3] == [
        "TemperatureLogitsWarper",
        "TopKLogitsWarper",
        "TopPLogitsWarper",
    ]
    # Left padding: every row ends with the generation prompt; the shorter prompts start with padding.
    assert (ids[:, -1] == ids[0, -1]).all()
    assert (ids[:, 0] == tokenizer.pad_token_id).any()
    assert len(answers) == len(prompts) and all(isinstance(a, str) and a for a in answers)
    # Same seed, same batch → same answers (the resume cache relies on keys, but reproducibility is nice).
    assert llm.complete_batch(prompts, seed=7, raw=True) == answers
    # Seeded per prompt, not per batch: alone, or in another order, a prompt gets the same answer (replicas rely
    # on it); another seed gives other answers.
    assert llm.complete_batch(prompts[:1], seed=7, raw=True) == answers[:1]
    assert llm.complete_batch(prompts[::-1], seed=7, raw=True) == answers[::-1]
    assert llm.complete_batch(prompts, seed=8, raw=True) != answers
    assert llm.engine_calls == 5


def test_transformers_backend_is_a_llamaindex_llm(tiny_qwen):
    from llama_index.core.llms import CustomLLM

    llm = create_llm(backend="transformers", model=str(tiny_qwen), device="cpu", max_new_tokens=8, raw=True)
    assert isinstance(llm, CustomLLM) and llm.raw
    response = llm.complete("公司是什么？")
    # Raw mode: exactly the engine's text for the default seed, streamed or not.
    assert response.text == llm.complete_batch(["公司是什么？"], seed=42, raw=True)[0]
    assert "".join(chunk.delta for chunk in llm.stream_complete("公司是什么？")) == response.text
    assert llm.metadata.num_output == 8


# ----------------------------------------------------------------------------------------------------------------
# vLLM: a fake with the real signatures and output shapes (vLLM needs a GPU and is not installed here)


# The fake lives in tests/fake_vllm.py: it fails where, how and with what vLLM 0.33 fails (see its docstring).
FakeVllmLLM = fake_vllm_module.FakeLLM
_chunk_of = fake_vllm_module.chunk_of


@pytest.fixture
def fake_vllm(monkeypatch):
    return fake_vllm_module.install(monkeypatch).module


def test_vllm_backend_takes_a_presets_gpu_settings(tiny_qwen, fake_vllm):
    # A GPU server's engine arguments (the CPU build gets others: tests/test_vllm_real.py runs the real engine,
    # its one chat call per batch, thinking off, max_tokens and per-request seeds).
    create_llm(_cfg(backend="vllm", model=str(tiny_qwen), max_new_tokens=64, seed=5))
    (engine,) = FakeVllmLLM.instances
    # Preset defaults for Qwen3-0.6B (found from the folder name), seed passed through.
    assert engine.kwargs["model"] == str(tiny_qwen)
    assert engine.kwargs["tensor_parallel_size"] == 1
    assert engine.kwargs["max_model_len"] == 4096
    assert engine.kwargs["gpu_memory_utilization"] == 0.9
    assert engine.kwargs["seed"] == 5 and engine.kwargs["quantization"] is None
    assert "enable_chunked_prefill" not in engine.kwargs  # chunked prefill stays on where the GPU runner has it


def test_vllm_backend_settings_override_presets(tiny_qwen, fake_vllm):
    create_llm(
        _cfg(
            backend="vllm",
            model=str(tiny_qwen),
            tensor_parallel_size=1,
            gpu_memory_utilization=0.5,
            max_model_len=2048,
            quantization="fp8",
            dtype="bfloat16",
        )
    )
    kwargs = FakeVllmLLM.instances[-1].kwargs
    assert (kwargs["gpu_memory_utilization"], kwargs["max_model_len"]) == (0.5, 2048)
    assert (kwargs["quantization"], kwargs["dtype"]) == ("fp8", "bfloat16")


def test_vllm_missing_is_a_one_line_install_hint(tiny_qwen, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(UserError, match=r"pip install 'offline-embft\[vllm\]'") as info:
        create_llm(_cfg(backend="vllm", model=str(tiny_qwen)))
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------------------------
# openai: a local OpenAI-compatible server on 127.0.0.1


# vLLM 0.33's answer to a prompt longer than max_model_len: VLLMValidationError in vllm/renderers/params.py
# (_token_len_check), turned into a 400 by vllm/entrypoints/serve/exception_handling/error_response.py.
CONTEXT_MESSAGE = (
    "This model's maximum context length is 4096 tokens. However, your prompt contains 5213 input tokens, which "
    "exceeds this limit even without any output tokens. Please reduce the length of the input prompt. "
    "(parameter=input_tokens, value=5213)"
)


class _Server:
    """An OpenAI-compatible server that fails the way real ones do, scripted per chunk.

    ``script[chunk text]`` is a list of behaviours played one per request for that chunk (then it answers normally):
    ``500``; ``429`` (with retry-after, as a proxy in front of vLLM sends it); ``400-context`` (vLLM's message);
    ``401`` (vLLM's auth middleware); ``no-choices``; ``null-content`` (vLLM's reasoning parser with the whole output
    inside the think block); ``malformed`` (a 200 whose body is cut off); ``reset`` (the connection is reset); ``hang``
    (no answer until the server closes).
    """

    def __init__(self, models: list[str] | None = None, api_key: str = "") -> None:
        self.models = models if models is not None else ["Qwen3-8B"]
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.hold_until_in_flight = 0  # >0: hold every request until this many are in flight at once
        self.script: dict[str, list[str]] = {}
        self.lock = threading.Lock()
        self.released = threading.Event()
        self.closed = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._send(401, {"error": "Unauthorized"})  # vllm/entrypoints/serve/middleware/authenticate.py
                    return False
                return True

            def do_GET(self) -> None:
                if not self._authorized():
                    return
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in server.models]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self._authorized():
                    return
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": "not found"}})
                    return
                if body["model"] not in server.models:
                    self._send(404, {"error": {"message": f"The model `{body['model']}` does not exist."}})
                    return
                chunk = _chunk_of(body["messages"][-1]["content"])
                with server.lock:
                    server.requests.append(body)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    if server.in_flight >= server.hold_until_in_flight:
                        server.released.set()
                    queue = server.script.get(chunk, [])
                    behaviour = queue.pop(0) if queue else "ok"
                server.released.wait(timeout=30)
                with server.lock:
                    server.in_flight -= 1
                self._behave(behaviour, body, chunk)

            def _behave(self, behaviour: str, body: dict[str, Any], chunk: str) -> None:
                message: dict[str, Any] = {"role": "assistant", "content": f"{chunk[:6]}指什么？"}
                choices = [{"index": 0, "message": message, "finish_reason": "stop"}]
                if behaviour == "hang":
                    server.closed.wait(timeout=60)
                    return
                if behaviour == "reset":
                    # SO_LINGER 0: closing sends a TCP RST instead of a clean FIN, like a crashed proxy.
                    self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                if behaviour == "500":
                    self._send(500, {"error": {"message": "overloaded", "type": "InternalServerError", "code": 500}})
                    return
                if behaviour == "429":
                    error = {"message": "Too Many Requests", "type": "RateLimitError", "code": 429}
                    self._send(429, {"error": error}, {"retry-after": "0.01"})
                    return
                if behaviour == "400-context":
                    error = {
                        "message": CONTEXT_MESSAGE,
                        "type": "BadRequestError",
                        "param": "input_tokens",
                        "code": 400,
                    }
                    self._send(400, {"error": error})
                    return
                if behaviour == "401":
                    self._send(401, {"error": "Unauthorized"})
                    return
                if behaviour == "no-choices":
                    choices = []
                elif behaviour == "null-content":
                    message.update(content=None, reasoning="好的，用户希望我根据资料提出问题。我先")
                    choices[0]["finish_reason"] = "length"
                response = {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": choices,
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
                data = json.dumps(response).encode()
                self._send(200, data[: len(data) // 2] if behaviour == "malformed" else data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.handle_error = lambda request, address: None  # a reset connection is the point, not news
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def asked(self, text: str) -> int:
        """How many requests the server received for a chunk."""
        return sum(_chunk_of(r["messages"][-1]["content"]) == text for r in self.requests)

    def close(self) -> None:
        self.closed.set()
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = _Server()
    srv.released.set()
    yield srv
    srv.close()


def _prompts(texts: list[str]) -> list[str]:
    return [render(load_template(), text, 1) for text in texts]


def test_openai_backend_concurrent_bounded_with_retries(server):
    server.script[TEXTS[0]] = ["500"]  # one 500, then fine: the client's retry must recover it
    server.released.clear()
    server.hold_until_in_flight = 3  # nothing is answered until three requests are in flight at once
    llm = create_llm(_cfg(backend="openai", base_url=server.url, model="Qwen/Qwen3-8B", concurrency=3))
    assert llm.model_name == "Qwen3-8B"  # matched by name to what the server serves
    prompts = _prompts(TEXTS) * 2
    answers = llm.complete_batch(prompts, seed=9)
    llm.close()

    assert answers == [f"{text[:6]}指什么？" for text in TEXTS] * 2
    assert server.max_in_flight == 3  # concurrent, and never more than generate.concurrency
    assert len(server.requests) == len(prompts) + 1  # the retried one
    request = server.requests[-1]
    # Each request's seed is the run's and its prompt's (as vLLM's and transformers' requests are seeded).
    assert request["seed"] == prompt_seed(9, request["messages"][-1]["content"])
    assert request["max_tokens"] == 12 and request["top_k"] == 20
    assert request["chat_template_kwargs"] == {"enable_thinking": False}


def test_openai_backend_failed_prompt_comes_back_as_none(server, caplog):
    server.script[TEXTS[1]] = ["500"] * 5
    llm = create_llm(_cfg(backend="openai", base_url=server.url + "/v1", request_retries=0))
    with caplog.at_level(logging.WARNING, logger="offline_embft.generate.llm.openai_backend"):
        answers = llm.complete_batch(_prompts(TEXTS[:3]))
    assert answers == [f"{TEXTS[0][:6]}指什么？", None, f"{TEXTS[2][:6]}指什么？"]
    assert "1 of 3 requests" in caplog.text


@pytest.mark.parametrize("behaviour", ["429", "reset", "500"])
def test_openai_backend_transient_failures_are_retried_and_recovered(server, behaviour):
    server.script[TEXTS[0]] = [behaviour]
    llm = create_llm(_cfg(backend="openai", base_url=server.url, request_retries=2))
    answers = llm.complete_batch(_prompts(TEXTS[:2]))
    assert answers == [f"{TEXTS[0][:6]}指什么？", f"{TEXTS[1][:6]}指什么？"]
    assert server.asked(TEXTS[0]) == 2  # failed once, answered on the client's retry


@pytest.mark.parametrize("behaviour", ["429", "reset", "malformed", "no-choices", "400-context"])
def test_openai_backend_persistent_failures_are_counted_not_raised(server, behaviour, caplog):
    """A prompt that keeps failing is None (retried later with another seed, then listed as failed): the others
    still come back, and nothing raises."""
    server.script[TEXTS[0]] = [behaviour] * 10
    llm = create_llm(_cfg(backend="openai", base_url=server.url, request_retries=1))
    with caplog.at_level(logging.WARNING, logger="offline_embft.generate.llm.openai_backend"):
        answers = llm.complete_batch(_prompts(TEXTS[:3]))
    assert answers == [None, f"{TEXTS[1][:6]}指什么？", f"{TEXTS[2][:6]}指什么？"]
    if behaviour == "400-context":
        # Not retried by the client (a 400 is final) and named once: the prompt is over the context length, and the
        # backend says so (the generate stage counts it as prompt_too_long and does not retry it).
        assert server.asked(TEXTS[0]) == 1
        assert "maximum context length is 4096 tokens" in caplog.text
        assert list(llm.last_refusals) == [0] and llm.last_refusals[0].startswith("prompt_too_long: ")
    else:
        assert "1 of 3 requests" in caplog.text and llm.last_refusals == {}


def test_a_prompt_over_the_context_length_is_a_counted_failure_of_generate(server, tmp_path):
    from offline_embft.generate.run import run, stats_path

    chunks = tmp_path / "chunks.jsonl"
    rows = [{"id": f"c{i}", "text": text} for i, text in enumerate(TEXTS)]
    chunks.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    server.script[TEXTS[2]] = ["400-context"] * 10
    cfg = _cfg(backend="openai", base_url=server.url, max_retries=1, request_retries=0)
    out = run(cfg, chunks, tmp_path / "ds.json")
    stats = json.loads(stats_path(out).read_text(encoding="utf-8"))
    # Refused for its length: counted with the server's reason, and not retried (it would be refused again).
    assert stats["questions"] == 4 and stats["chunks_failed"] == 1 and stats["engine_errors"] == 0
    assert stats["prompts_refused"] == 1 and server.asked(TEXTS[2]) == 1
    assert stats["failed"] == [
        {
            "id": "c2",
            "reasons": {"prompt_too_long": 1},
            "last_answer": "",
            "refused": f"prompt_too_long: {CONTEXT_MESSAGE}",
        }
    ]


def test_reasoning_without_content_is_kept_as_an_unclosed_think_block(server, tmp_path):
    """vLLM's reasoning parser moves a think block into `reasoning` and leaves `content` null when the answer was cut
    while thinking: that is the model's answer (cached, counted as thinking_unclosed), not an empty string."""
    server.script[TEXTS[0]] = ["null-content", "null-content"]
    llm = create_llm(_cfg(backend="openai", base_url=server.url))
    (answer,) = llm.complete_batch(_prompts(TEXTS[:1]), raw=True)
    assert answer == "<think>\n好的，用户希望我根据资料提出问题。我先"
    # Cleaned (the default): nothing usable, counted as an unclosed think block.
    assert llm.complete_batch(_prompts(TEXTS[:1])) == [None]
    assert llm.cleaner.filter.thinking_unclosed == 1 and llm.cleaner.failures == 1
    from offline_embft.generate.questions import FilterSettings, QuestionFilter

    kept, dropped = QuestionFilter(FilterSettings()).select(answer, TEXTS[0], 1)
    assert kept == [] and sum(dropped.values()) >= 1


def test_a_batch_of_one_over_long_prompt_does_not_stop_the_run(server):
    server.script[TEXTS[0]] = ["400-context"]
    llm = create_llm(_cfg(backend="openai", base_url=server.url))
    assert llm.complete_batch(_prompts(TEXTS[:1])) == [None]


def test_openai_backend_times_out_slow_requests(server):
    server.script[TEXTS[0]] = ["hang"]  # never answers: the client's timeout must end the request
    llm = create_llm(_cfg(backend="openai", base_url=server.url, timeout=0.2, request_retries=0))
    with pytest.raises(UserError, match=r"every request .* failed"):
        llm.complete_batch(_prompts(TEXTS[:1]))


def test_a_wrong_api_key_is_one_line(server):
    server.api_key = "secret"
    with pytest.raises(UserError, match=r"rejected the API key; set generate\.api_key") as info:
        create_llm(_cfg(backend="openai", base_url=server.url, api_key="wrong"))
    assert "\n" not in str(info.value)
    # A proxy that lists models freely but guards completions: the same line, from the first batch.
    server.api_key = ""
    llm = create_llm(_cfg(backend="openai", base_url=server.url, api_key="wrong"))
    server.script[TEXTS[0]] = ["401"]
    with pytest.raises(UserError, match=r"rejected the API key; set generate\.api_key") as info:
        llm.complete_batch(_prompts(TEXTS[:2]))
    assert "\n" not in str(info.value)


def test_openai_backend_errors_are_one_line(server):
    with pytest.raises(UserError, match="--base-url"):
        create_llm(_cfg(backend="openai", base_url=""))
    server.models = ["a", "b"]
    with pytest.raises(UserError, match="serves a, b"):
        create_llm(_cfg(backend="openai", base_url=server.url, model="c"))
    # A port that is bound but not listening refuses every connection, for as long as we hold it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(UserError, match="cannot reach") as info:
            create_llm(_cfg(backend="openai", base_url=dead, request_retries=0, timeout=2))
    assert "\n" not in str(info.value)


def test_openai_backend_spreads_a_batch_over_several_servers():
    first, second = _Server(), _Server()
    try:
        llm = create_llm(_cfg(backend="openai", base_url=f"{first.url}, {second.url}", concurrency=2))
        prompts = [render(load_template(), text, 1) for text in TEXTS] * 2
        assert llm.complete_batch(prompts, seed=5) == [f"{text[:6]}指什么？" for text in TEXTS] * 2
        assert len(first.requests) == len(second.requests) == 5  # half the batch each
        requests = first.requests + second.requests
        assert all(request["seed"] == prompt_seed(5, request["messages"][-1]["content"]) for request in requests)
        assert llm.settings()["base_url"] == [f"{first.url}/v1", f"{second.url}/v1"]
        assert llm.identity == "openai:Qwen3-8B" and llm.engine_calls == 1
        llm.close()
        second.models = ["Qwen3-4B"]
        with pytest.raises(UserError, match="serve different models"):
            create_llm(_cfg(backend="openai", base_url=f"{first.url},{second.url}"))
    finally:
        first.close()
        second.close()


def test_normalize_base_url():
    assert normalize_base_url("http://gpu:8000") == "http://gpu:8000/v1"
    assert normalize_base_url("http://gpu:8000/v1/") == "http://gpu:8000/v1"
    assert normalize_base_url("http://gpu:8000/v1/chat/completions") == "http://gpu:8000/v1"
    with pytest.raises(UserError):
        normalize_base_url("gpu:8000")


# ----------------------------------------------------------------------------------------------------------------
# ict, presets, model lookup


def test_ict_is_deterministic_per_seed_and_draws_from_the_chunk():
    text = "第一句讲公司的定义。第二句讲股东的责任。第三句讲公司的权利。"
    first = pick_sentences(text, 2, seed=1)
    assert first == pick_sentences(text, 2, seed=1)
    assert len(set(first)) == 2 and all(sentence + "。" in text for sentence in first)
    seeds = {tuple(pick_sentences(text, 1, seed=s)) for s in range(20)}
    assert len(seeds) > 1  # another seed (a retry) draws another sentence
    # One long sentence: clauses, never the whole passage.
    single = "为了规范公司的组织和行为，保护公司、股东、职工和债权人的合法权益，制定本法。"
    assert pick_sentences(single, 1, seed=0)[0] != single.rstrip("。")


def test_ict_masks_the_positive_most_of_the_time():
    text = "第一句讲公司的定义。第二句讲股东的责任。第三句讲公司的权利。"
    removed = 0
    for i in range(200):
        masked = mask_positive(text, ["第二句讲股东的责任"], seed=0, chunk_id=str(i), keep_prob=0.1)
        assert masked in (text, "第一句讲公司的定义。第三句讲公司的权利。")
        removed += masked != text
    assert 160 <= removed <= 195
    assert mask_positive(text, ["第二句讲股东的责任"], seed=0, chunk_id="x", keep_prob=1.0) == text


def test_ict_backend_finds_the_chunk_inside_the_prompt():
    template = load_template()
    llm = create_llm(_cfg(backend="ict", questions_per_chunk=2), template=template)
    assert isinstance(llm, BatchLLM) and llm.pseudo_queries
    text = "第一句讲公司的定义。第二句讲股东的责任。第三句讲公司的权利。"
    (answer,) = llm.complete_batch([render(template, text, 2)])
    lines = answer.splitlines()
    assert len(lines) == 2 and all(line in text for line in lines)


def test_presets_and_model_lookup(tmp_path):
    assert find_preset("Qwen/Qwen3-8B").name == "Qwen3-8B"
    assert find_preset("qwen3-32b-awq").quantization == "awq"
    assert find_preset("Models/Qwen/Qwen3-32B").tensor_parallel_size == 2
    assert find_preset("my-model") is None
    model_dir = tmp_path / "Qwen" / "Qwen3-4B"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text("{}")
    resolved = resolve_model("Qwen3-4B", tmp_path)
    assert resolved.path == model_dir and resolved.preset.name == "Qwen3-4B"
    with pytest.raises(UserError, match="offline-embft download") as info:
        resolve_model("Qwen3-14B", tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="not found"):
        resolve_model(str(tmp_path / "nope"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no config\.json"):
        resolve_model(str(tmp_path / "empty"), tmp_path)
    with pytest.raises(UserError, match="no LLM given"):
        create_llm(_cfg(backend="transformers", model=""))


def test_llm_in_the_modelscope_cache_is_found_by_generate_and_doctor(tmp_path, no_caches):
    """The cached-LLM bug: doctor said OK for ~/.cache/modelscope/hub/models/Qwen/Qwen3-8B, generate said not found."""
    from offline_embft.doctor import check_llm

    cached = no_caches / ".cache/modelscope/hub/models/Qwen/Qwen3-8B"
    cached.mkdir(parents=True)
    for name, content in (("config.json", "{}"), ("tokenizer.json", "{}")):
        (cached / name).write_text(content)
    import torch
    from safetensors.torch import save_file  # a whole weights file: doctor checks its header against its size

    save_file({"w": torch.zeros(2)}, str(cached / "model.safetensors"))
    for ref in ("Qwen3-8B", "Qwen/Qwen3-8B", "qwen3-8b"):
        resolved = resolve_model(ref, tmp_path / "Models")
        assert resolved.path == cached and resolved.preset.name == "Qwen3-8B"
    cfg = PipelineConfig(llm="Qwen3-8B", models_dir=str(tmp_path / "Models"))
    cfg.generate.backend = "vllm"
    llm_line = check_llm(cfg.resolve())
    assert llm_line.verdict == "OK" and str(cached) in llm_line.detail


def test_a_dead_engines_cause_is_read_from_its_log():
    from offline_embft.generate.llm.vllm_backend import death_cause

    # The lines vLLM 0.32's CPU build logged when a seeded batch killed it (before chunked prefill was turned off).
    log = (
        "(Worker pid=14162) ERROR 12-08 00:26:05 [multiproc_executor.py:1063] RuntimeError: CPU Generator does not "
        "use offset\n"
        "(EngineCore pid=13564) ERROR 12-08 00:26:05 [core.py:1512] RuntimeError: Worker failed with error 'CPU "
        "Generator does not use offset', please check the stack trace above for the root cause\n"
        "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) for the "
        "root cause.\n"
    )
    assert death_cause(log) == "CPU Generator does not use offset"
    assert death_cause(log.splitlines()[0]) == "RuntimeError: CPU Generator does not use offset"
    assert death_cause(log.splitlines()[2]) is None  # EngineDeadError itself is no cause
    assert death_cause("INFO all is well\n") is None  # a SIGKILL leaves nothing to read
