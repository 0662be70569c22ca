"""The suite's own guarantees: CI fails (never skips) without a required package, and the working-tree check that
runs when the session ends sees a test writing into the repository, ignored folders included."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import require, tree_changes, working_tree_state


def test_a_missing_required_package_skips_locally_and_fails_in_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-package is not installed"):
        require("no_such_module_for_offline_embft", "no-such-package")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no-such-package is required in CI"):
        require("no_such_module_for_offline_embft", "no-such-package")
    assert require("json", "json").dumps([]) == "[]"


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_working_tree_check_sees_writes_to_tracked_untracked_and_ignored_paths(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / ".gitignore").write_text(".make/\n__pycache__/\n", encoding="utf-8")
    (repo / "tracked.txt").write_text("a", encoding="utf-8")
    (repo / ".make" / "cpu").mkdir(parents=True)
    (repo / ".make" / "cpu" / "train.yaml").write_text("lr: 1e-4\n", encoding="utf-8")
    _git(repo, "add", ".gitignore", "tracked.txt")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")

    before = working_tree_state(repo)
    (repo / "__pycache__").mkdir()
    (repo / "__pycache__" / "x.pyc").write_bytes(b"cache")  # caches are allowed
    assert tree_changes(before, working_tree_state(repo)) == []

    (repo / ".make" / "cpu" / "train.yaml").write_text("lr: 3.0e-5\n", encoding="utf-8")  # an ignored file rewritten
    assert tree_changes(before, working_tree_state(repo)) == [".make"]
    (repo / "tracked.txt").write_text("b", encoding="utf-8")
    (repo / "stray.json").write_text("{}", encoding="utf-8")
    assert tree_changes(before, working_tree_state(repo)) == [".make", "stray.json", "tracked.txt"]
    assert working_tree_state(tmp_path / "not-a-repo") is None
