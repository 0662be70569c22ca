"""serve without a server: what a model directory is, the servers' command lines, the gate, the config, the CLI's
one-line refusals. The real vLLM servers are in tests/test_serve_vllm.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tiny_encoders import build_tiny_bert, raw_minilm_copy

from offline_embft.core.config import PipelineConfig, load_config
from offline_embft.core.config.serve import ServeConfig
from offline_embft.core.errors import UserError
from offline_embft.serve import clients, gate, models, parity
from offline_embft.serve import run as serve_run
from offline_embft.serve.process import Server, ServerDied, last_error

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert") / "bert")


@pytest.fixture(scope="module")
def tiny_cross_encoder(tiny_bert, tmp_path_factory) -> Path:
    """A one-label BertForSequenceClassification saved by sentence-transformers' CrossEncoder."""
    from sentence_transformers import CrossEncoder

    out = tmp_path_factory.mktemp("tiny-ce") / "ce"
    CrossEncoder(str(tiny_bert), num_labels=1, device="cpu").save(str(out))
    return out


@pytest.fixture(scope="module")
def cls_bert(tiny_bert, tmp_path_factory) -> Path:
    """What convert makes of BCE: Transformer → CLS Pooling → Normalize (sentence-transformers' current layout)."""
    from offline_embft.convert import run as convert
    from offline_embft.core.config import ConvertConfig

    out = tmp_path_factory.mktemp("cls") / "bert-st"
    return convert.run(ConvertConfig(model=str(tiny_bert), out_dir=str(out), pooling="cls", max_seq_length=64))


# ---------------------------------------------------------------------------------------------------------------
# What a directory is


def test_a_cls_model_from_convert_is_served_with_cls_pooling_and_normalize_set_explicitly(cls_bert):
    spec = models.embedder(cls_bert)
    assert (spec.pooling, spec.normalize, spec.max_seq_length) == ("CLS", True, 64)
    assert json.loads(spec.pooler_config()) == {"seq_pooling_type": "CLS", "use_activation": True}
    assert spec.weights == cls_bert  # sentence-transformers keeps the Transformer at the root


def test_the_packaged_minilm_is_mean_pooled_and_normalized(minilm_path):
    spec = models.embedder(minilm_path)
    assert (spec.pooling, spec.normalize, spec.max_seq_length) == ("MEAN", True, 256)


def test_a_model_trained_with_prompts_carries_them_to_the_client_lines(cls_bert, tmp_path):
    import shutil

    model = shutil.copytree(cls_bert, tmp_path / "prompted")
    config = model / "config_sentence_transformers.json"
    data = json.loads(config.read_text())
    data["prompts"] = {"query": "为这个句子生成表示以用于检索相关文章：", "document": ""}
    config.write_text(json.dumps(data))
    spec = models.embedder(model)
    assert spec.query_prompt == "为这个句子生成表示以用于检索相关文章："
    text = clients.instructions(clients.Endpoint("http://127.0.0.1:8000", "m", 64), None, False, spec.query_prompt)
    assert "Prepend the query instruction to every QUESTION" in text
    assert "为这个句子生成表示以用于检索相关文章：" in text


def test_a_reranker_given_as_the_embedder_is_refused_in_one_line(tiny_cross_encoder):
    with pytest.raises(UserError, match=r"is a cross-encoder \(BertForSequenceClassification\).*--reranker"):
        models.embedder(tiny_cross_encoder)


def test_an_embedder_given_as_the_reranker_is_refused_in_one_line(cls_bert, minilm_path):
    for path in (cls_bert, minilm_path):
        with pytest.raises(UserError, match=r"is an embedding model.*not a cross-encoder.*--model"):
            models.reranker(path)


def test_a_raw_checkpoint_is_refused_because_its_pooling_would_be_a_guess(minilm_path, tmp_path):
    raw = raw_minilm_copy(minilm_path, tmp_path / "raw")
    with pytest.raises(UserError, match=r"without sentence-transformers files.*offline-embft convert"):
        models.embedder(raw)


def test_pooling_or_modules_vllm_does_not_run_are_refused(cls_bert, tmp_path):
    import shutil

    model = shutil.copytree(cls_bert, tmp_path / "max")
    pooling = next(model.glob("*Pooling/config.json"))
    config = json.loads(pooling.read_text())
    config.update({"pooling_mode": "max"} if "pooling_mode" in config else {"pooling_mode_cls_token": False})
    config["pooling_mode_max_tokens"] = True
    pooling.write_text(json.dumps(config))
    with pytest.raises(UserError, match="vLLM's pooling runner pools with cls, mean or lasttoken only"):
        models.embedder(model)


def test_a_classifier_with_several_labels_is_not_a_reranker(tiny_cross_encoder, tmp_path):
    import shutil

    model = shutil.copytree(tiny_cross_encoder, tmp_path / "three")
    config = json.loads((model / "config.json").read_text())
    config["id2label"] = {"0": "a", "1": "b", "2": "c"}
    config["label2id"] = {"a": 0, "b": 1, "c": 2}
    config.pop("num_labels", None)
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="classifier with 3 labels"):
        models.reranker(model)


def test_the_trained_reranker_reads_as_one(tiny_cross_encoder):
    spec = models.reranker(tiny_cross_encoder)
    assert spec.architecture == "BertForSequenceClassification"


# ---------------------------------------------------------------------------------------------------------------
# The servers' command lines


def _serve_config(**values) -> ServeConfig:
    return ServeConfig(log_dir="/tmp/logs", served_name="run", reranker_served_name="run-reranker", **values)


def test_the_key_travels_by_environment_never_on_the_command_line(cls_bert, tiny_cross_encoder):
    serve = _serve_config(api_key="s3cret")
    servers = serve_run.build_servers(serve, models.embedder(cls_bert), models.reranker(tiny_cross_encoder), False)
    assert [s.name for s in servers] == ["embedder", "reranker"]
    for server in servers:
        assert "s3cret" not in " ".join(server.command)  # `ps` shows every user the command line
        assert server.env[gate.KEY_VAR] == "s3cret"
        assert server.command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]  # not `vllm serve` (CPU build)
        assert server.args[server.args.index("--middleware") + 1] == serve_run.GATE
    embed, rerank = servers
    assert json.loads(embed.args[embed.args.index("--pooler-config") + 1])["seq_pooling_type"] == "CLS"
    assert embed.args[embed.args.index("--max-model-len") + 1] == "64"  # where sentence-transformers cuts
    assert embed.env[gate.ROUTES_VAR].split(",") == list(gate.ROUTES["embedder"])
    assert "/v1/rerank" in rerank.env[gate.ROUTES_VAR] and "/v1/embeddings" not in rerank.env[gate.ROUTES_VAR]
    assert "--pooler-config" not in rerank.args


def test_cpu_servers_size_their_cache_and_gpu_servers_share_the_gpu(cls_bert, tiny_cross_encoder):
    spec, ce = models.embedder(cls_bert), models.reranker(tiny_cross_encoder)
    cpu = serve_run.build_servers(_serve_config(), spec, ce, gpu=False)
    assert all(s.args[s.args.index("--kv-cache-memory-bytes") + 1] == str(2**30) for s in cpu)
    # float16, vLLM's auto for pooling models, is emulated on a CPU: 8.5x slower than float32 (bench_serve).
    assert all(s.args[s.args.index("--dtype") + 1] == "float32" for s in cpu)
    both = serve_run.build_servers(_serve_config(), spec, ce, gpu=True)
    assert [s.args[s.args.index("--gpu-memory-utilization") + 1] for s in both] == ["0.45", "0.45"]
    assert all(s.args[s.args.index("--dtype") + 1] == "auto" for s in both)
    alone = serve_run.build_servers(_serve_config(), spec, None, gpu=True)
    assert alone[0].args[alone[0].args.index("--gpu-memory-utilization") + 1] == "0.9"


def test_the_parity_result_goes_beside_the_model_not_into_it(tmp_path, minilm_path):
    model = tmp_path / "Models" / "model_outdir" / "law"
    # A file written inside would make the pipeline think the model changed and retrain what follows it.
    check = serve_run.check_file(model, tmp_path / "Models", tmp_path / "logs")
    assert check == model.parent / "law.serve_check.json"
    # Never into an installed package's folder: beside the logs instead.
    assert serve_run.check_file(minilm_path, tmp_path / "Models", tmp_path / "logs").parent == tmp_path / "logs"


# ---------------------------------------------------------------------------------------------------------------
# The gate


async def _answer(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _gate_client(monkeypatch, role: str, key: str) -> httpx.AsyncClient:
    monkeypatch.setenv(gate.ROUTES_VAR, ",".join(gate.ROUTES[role]))
    monkeypatch.setenv(gate.KEY_VAR, key)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=gate.Gate(_answer)), base_url="http://test")


def test_the_gate_asks_for_the_key_on_paths_vllm_leaves_open_and_serves_only_the_role(monkeypatch):
    async def calls():
        async with _gate_client(monkeypatch, "reranker", "k") as client:
            good = {"Authorization": "Bearer k"}
            return [
                (await client.post("/rerank")).status_code,  # vLLM's own key check skips paths outside /v1
                (await client.post("/rerank", headers={"Authorization": "Bearer nope"})).status_code,
                (await client.post("/rerank", headers=good)).status_code,
                (await client.post("/v1/rerank", headers=good)).status_code,
                (await client.post("/v1/embeddings", headers=good)).status_code,  # not this server's role
                (await client.post("/tokenize", headers=good)).status_code,
                (await client.get("/health")).status_code,  # open: load balancers and serve itself poll it
            ]

    assert asyncio.run(calls()) == [401, 401, 200, 200, 404, 404, 200]


def test_the_gate_without_a_key_still_keeps_an_embedder_from_scoring(monkeypatch):
    async def calls():
        async with _gate_client(monkeypatch, "embedder", "") as client:
            return [(await client.post(p)).status_code for p in ("/v1/embeddings", "/v1/score", "/rerank")]

    # An embedding model's server answers /rerank with cosine similarities: numbers that mean nothing there.
    assert asyncio.run(calls()) == [200, 404, 404]


# ---------------------------------------------------------------------------------------------------------------
# Config and CLI


def test_serve_defaults_are_the_run_and_its_name(tmp_path):
    cfg = PipelineConfig(run_name="law", models_dir=str(tmp_path / "M"), results_dir=str(tmp_path / "r")).resolve()
    serve = cfg.serve
    assert (serve.host, serve.port, serve.reranker_port, serve.api_key) == ("127.0.0.1", 8000, 8001, "")
    assert (serve.served_name, serve.reranker_served_name) == ("law", "law-reranker")
    assert Path(serve.model) == tmp_path / "M" / "model_outdir" / "law"
    assert Path(serve.log_dir) == tmp_path / "r" / "serve"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("serve.port=8001", "serve.port and serve.reranker_port are both 8001"),
        ("serve.port=70000", "serve.port must be a port number"),
        ("serve.dtype=int8", "serve.dtype must be one of"),
        ("serve.cpu_kv_cache_gib=0", "serve.cpu_kv_cache_gib must be at least 1"),
    ],
)
def test_bad_serve_settings_fail_in_one_line(override, message):
    with pytest.raises(UserError, match=message):
        load_config(None, [override])


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "offline_embft.cli", "serve", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_serve_without_a_trained_model_says_what_to_run(tmp_path):
    done = _cli("--set", f"models_dir={tmp_path / 'M'}", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: no fine-tuned model at")
    assert "make train" in done.stderr and "Traceback" not in done.stderr


def test_serve_refuses_a_reranker_given_as_the_model_before_starting_anything(tmp_path, tiny_cross_encoder):
    done = _cli("--model", str(tiny_cross_encoder), cwd=tmp_path)
    assert done.returncode == 2
    assert "is a cross-encoder" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_taken_port_is_named_before_any_model_loads(tmp_path, cls_bert):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _cli("--model", str(cls_bert), "--port", str(port), "--reranker", "none", cwd=tmp_path)
    assert done.returncode == 2
    assert f"127.0.0.1:{port} (embedder) is not free" in done.stderr


# ---------------------------------------------------------------------------------------------------------------
# Process groups, without vLLM: a stand-in server that spawns a child, as vLLM's API server spawns its engine


SLEEPER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print("child", child.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _child_pid(log: Path) -> int:
    for _ in range(200):
        if log.is_file() and "child" in log.read_text():
            return int(log.read_text().split()[1])
        time.sleep(0.05)
    raise AssertionError(log.read_text() if log.is_file() else "no log")


def test_stop_takes_down_the_whole_process_group(tmp_path):
    server = Server("embedder", [], "127.0.0.1", 1, tmp_path / "s.log", program=[sys.executable, "-c", SLEEPER])
    server.start()
    child = _child_pid(server.log)
    assert _alive(server.process.pid) and _alive(child)
    server.stop(grace=5)
    assert not _alive(server.process.pid) and not _alive(child)


def test_a_dead_server_is_named_with_its_signal_and_last_error(tmp_path):
    log = tmp_path / "e.log"
    log.write_text("INFO loading\n(EngineCore pid=7) ERROR 12-08 00:23:11 [x.py:1] ValueError: out of cheese\nbye\n")
    assert last_error(log) == "ValueError: out of cheese"
    server = Server("reranker", [], "127.0.0.1", 8001, tmp_path / "r.log", program=[sys.executable, "-c", SLEEPER])
    server.start()
    _child_pid(server.log)
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=10)
    with pytest.raises(ServerDied, match=r"reranker server \(port 8001\) exited with SIGKILL"):
        serve_run._watch([server], interval=0.05)
    server.stop(grace=2)  # its orphaned child too


def test_parity_texts_come_from_the_validation_set(tmp_path):
    data = {
        "queries": {"q1": "问题一", "q2": "问题二"},
        "corpus": {"a": "段落甲", "b": "段落乙", "c": "段落丙"},
        "relevant_docs": {"q1": ["b"], "q2": ["c"]},
    }
    path = tmp_path / "val_dataset.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    texts = parity.sample(path, None, count=4, candidates=3)
    assert texts.queries == ["问题一", "问题二"]
    assert texts.passages[:2] == ["段落乙", "段落丙"]  # the questions' own passages first
    assert texts.rerank[0] == ("问题一", ["段落乙", "段落甲", "段落丙"])
    fallback = parity.sample(tmp_path / "missing.json", tmp_path / "missing.jsonl")
    assert fallback.source.startswith("built-in sample") and fallback.queries and fallback.passages


def test_ctrl_c_reaches_serve_even_when_it_started_with_sigint_ignored():
    # A shell's background job (`make serve &`) starts with SIGINT ignored, and Python leaves it so.
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(KeyboardInterrupt), serve_run._stop_signals_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler interrupts this
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # restored on the way out
        with pytest.raises(KeyboardInterrupt), serve_run._stop_signals_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)  # `kill PID`, systemd's stop: the same clean stop
            time.sleep(5)
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_port_a_stopped_server_just_left_is_free_again():
    import socket

    # The server side closes first, as a stopped vLLM does: its end of the connection waits in TIME_WAIT.
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()
    client.close()
    listener.close()
    serve_run._check_port("127.0.0.1", port, "embedder")  # a restarted serve binds it (uvicorn: SO_REUSEADDR)
