"""The package's floors: import-linter holds the layers (entry points → stages → retrieval → core, no stage importing
a sibling stage, no import circles; the contract is pyproject.toml's [tool.importlinter], run by `make check`).

The linter is run on the real tree, and on a copy of the package with one wrong-way import added, to show that the
contract fails on exactly the kind of import it exists to stop, naming it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, require


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` (no cache: nothing written beside the code) on the package found from ``cwd``."""
    require("importlinter", "import-linter")
    binary = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(cwd)}  # the package under cwd, not the installed (editable) one
    return subprocess.run([str(binary), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, check=False)


def test_the_package_keeps_its_layers():
    done = _lint_imports(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"Contracts: [1-9]\d* kept, 0 broken", done.stdout), done.stdout


def _copy(tmp_path: Path) -> Path:
    """The package's Python files and the contract, copied under ``tmp_path``."""
    shutil.copytree(
        REPO / "offline_embft",
        tmp_path / "offline_embft",
        ignore=lambda folder, names: [n for n in names if not n.endswith(".py") and not (Path(folder) / n).is_dir()],
    )
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


# (module of the copy, the import appended to it, what the linter must say about it: patterns)
WRONG_WAY = {
    "a stage imports a sibling stage": (
        "evaluate/run.py",
        "from offline_embft.train import common",
        [
            r"offline_embft\.evaluate is not allowed to import offline_embft\.train",
            r"- offline_embft\.evaluate\.run -> offline_embft\.train\.common \(l\.\d+\)",
        ],
    ),
    "core imports a stage": (
        "core/io.py",
        "from offline_embft.ingest import chunking",
        [
            r"offline_embft\.core is not allowed to import offline_embft\.ingest",
            r"- offline_embft\.core\.io -> offline_embft\.ingest\.chunking \(l\.\d+\)",
        ],
    ),
    "retrieval imports an entry point": (
        "retrieval/bm25.py",
        "from offline_embft import pipeline",
        [
            r"offline_embft\.retrieval is not allowed to import offline_embft\.pipeline",
            r"- offline_embft\.retrieval\.bm25 -> offline_embft\.pipeline \(l\.\d+\)",
        ],
    ),
    "two core modules import each other": (
        "core/errors.py",
        "from offline_embft.core import model_files",  # model_files imports errors: a circle
        [r"No cycles are allowed in offline_embft\.core\.", r"- \.(errors -> \.model_files|model_files -> \.errors) "],
    ),
}


@pytest.mark.parametrize("case", list(WRONG_WAY))
def test_a_wrong_way_import_breaks_the_contract_and_is_named(tmp_path, case):
    module, line, expected = WRONG_WAY[case]
    copy = _copy(tmp_path)
    assert _lint_imports(copy).returncode == 0, "the copy, untouched, keeps the contract"
    target = copy / "offline_embft" / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n{line}  # noqa: E402, F401\n", encoding="utf-8")
    done = _lint_imports(copy)
    assert done.returncode == 1, done.stdout + done.stderr
    for pattern in expected:
        assert re.search(pattern, done.stdout), f"{pattern!r} not in:\n{done.stdout}"


def _layout_facts(root: Path) -> subprocess.CompletedProcess[str]:
    """scripts/layout_facts.py on the checkout at ``root``, in a process of its own (grimp imports by name)."""
    require("grimp", "import-linter")
    script = REPO / "scripts" / "layout_facts.py"
    return subprocess.run(
        [sys.executable, str(script), "--root", str(root)], capture_output=True, text=True, check=False
    )


def test_no_circle_no_module_over_500_lines_no_function_over_80():
    done = _layout_facts(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "import circles (module level): 0" in done.stdout and "floors kept" in done.stdout


def test_the_count_sees_what_the_linter_leaves_to_it(tmp_path):
    """A package's __init__ and its own module importing each other is a circle the linter's sibling check passes;
    sizes are not the linter's job at all. The script names all three."""
    copy = _copy(tmp_path)
    base = copy / "offline_embft" / "generate" / "llm" / "base.py"  # generate/llm/__init__ imports base
    base.write_text(base.read_text(encoding="utf-8") + "\nimport offline_embft.generate.llm  # noqa: E402\n", "utf-8")
    errors = copy / "offline_embft" / "core" / "errors.py"
    body = "".join(f"    x{i} = {i}\n" for i in range(79))  # def + 79 lines + return: 81
    errors.write_text(
        errors.read_text(encoding="utf-8") + f"\n\ndef long_one():\n{body}    return 0\n" + "# padding\n" * 500,
        encoding="utf-8",
    )
    assert _lint_imports(copy).returncode == 0, "the linter passes all three"
    done = _layout_facts(copy)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "import circle: offline_embft.generate.llm <-> offline_embft.generate.llm.base" in done.stdout
    assert "function over 80 lines: offline_embft.core.errors:long_one (81)" in done.stdout
    assert re.search(r"module over 500 lines: offline_embft\.core\.errors \(\d+\)", done.stdout), done.stdout
