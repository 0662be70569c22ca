"""README's promises, each guarded by a test that fails when the promise breaks, wherever the promise now lives.

Every row of README's "the blog script | offline_embft" table names the tests that hold it to its word (most live
beside the feature; the few that had none are here). A row added to the README without a test, or a test renamed
away, fails ``test_every_blog_script_row_is_guarded``. The Troubleshooting rows (docs/troubleshooting.md) quote
messages users will search for: the code must print exactly those.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
TROUBLESHOOTING = (REPO / "docs" / "troubleshooting.md").read_text(encoding="utf-8")

# README row (a phrase of its offline_embft column) → the tests that fail if that promise breaks.
GUARDS: dict[str, list[str]] = {
    "LlamaIndex's dataset format and splitter kept": [
        "test_generate.py::test_native_run_writes_a_clean_loadable_dataset_with_stats",
        "test_generate.py::test_llamaindex_engine_same_prompt_same_cache",
        "test_readme_promises.py::test_chunks_are_cut_by_llamaindex_sentence_splitter",
        "test_readme_promises.py::test_nothing_imports_llamaindex_finetuning_but_its_own_engine",
    ],
    "all prompts of a batch in one vLLM call": [
        "test_vllm_real.py::test_a_seeded_batch_longer_than_a_scheduler_step_is_one_chat_call_thinking_off",
        "test_generate.py::test_batches_group_prompts_of_similar_length",
    ],
    "Chinese prompt, thinking disabled": [
        "test_readme_promises.py::test_the_default_prompt_is_chinese",
        "test_vllm_real.py::test_a_seeded_batch_longer_than_a_scheduler_step_is_one_chat_call_thinking_off",
        "test_llm_backends.py::test_transformers_backend_batches_with_left_padding_and_thinking_off",
        "test_generate.py::test_native_run_writes_a_clean_loadable_dataset_with_stats",
        "test_questions.py::test_each_filter_counts_its_reason",
    ],
    "`convert` forces CLS + Normalize": [
        "test_models.py::test_convert_raw_xlmr_uses_cls_and_is_verified",
        "test_models.py::test_verify_catches_the_wrong_pooling",
    ],
    "PDF, Word (DOCX), HTML (GBK too), Markdown, TXT": [
        "test_office.py::test_docx_body_in_reading_order_without_running_lines_comments_or_text_boxes",
        "test_office.py::test_docx_table_cells_come_out_once_in_row_order",
        "test_office.py::test_docx_headings_and_numbered_titles_become_chunk_metadata",
        "test_office.py::test_gbk_html_page_main_text_with_headings_and_table",
        "test_office.py::test_bad_docx_and_legacy_office_files_are_skipped_with_reasons",
        "test_office.py::test_office_pdf_loses_running_lines_and_keeps_the_text",
    ],
    "chunks follow the document's own units: one article or section per chunk": [
        "test_structure.py::test_each_unit_gives_every_article_its_own_chunk",
        "test_structure.py::test_a_text_without_units_is_chunked_as_by_sentences",
        "test_structure.py::test_statute_is_split_at_articles_with_chapter_paths",
        "test_structure.py::test_ingest_writes_heading_paths_and_never_exceeds_the_token_size",
        "test_structure.py::test_markdown_headings_give_the_path",
        "test_structure.py::test_numbered_headings_in_plain_text",
    ],
    "train/val split **by file**": [
        "test_ingest.py::test_split_by_file_is_seeded_and_never_leaks",
        "test_ingest.py::test_single_file_is_split_by_chunk_without_leakage",
    ],
    "batch 32+, `NO_DUPLICATES` sampler, cached MNRL": [
        "test_train.py::test_the_default_recipe_uses_batch_32_without_duplicates",
        "test_train.py::test_hard_negatives_with_cached_mnrl_and_matryoshka",
    ],
    "every stage writes atomically and resumes": [
        "test_generate.py::test_killed_run_resumes_with_nothing_lost_and_nothing_generated_twice",
        "test_train.py::test_a_crashed_run_resumes_from_its_checkpoint",
        "test_ingest.py::test_failed_write_leaves_previous_output_intact",
        "test_evaluate.py::test_model_that_does_not_load_leaves_no_output",
        "test_models.py::test_an_interrupted_download_resumes_where_it_stopped",
    ],
    "base vs fine-tuned vs BM25 vs hybrid": [
        "test_pipeline_e2e.py::test_cpu_pipeline_end_to_end_without_network",
        "test_evaluate.py::test_ir_metrics_equal_information_retrieval_evaluator",
        "test_report.py::test_sign_test",
        "test_report.py::test_chart_draws_cjk_labels_without_missing_glyphs",
    ],
    "nothing touches the network at run time": [
        "test_pipeline_e2e.py::test_cpu_pipeline_end_to_end_without_network",
        "test_airgap.py::test_a_fresh_process_importing_the_cli_has_the_readme_variables_before_any_heavy_import",
        "test_airgap.py::test_download_convert_doctor_without_network",
    ],
}


def _blog_table_rows() -> list[str]:
    """The offline_embft column of each row of the README's "the blog script | offline_embft" table."""
    table = README[README.index("| the blog script | offline_embft |") :].split("\n\n")[0]
    rows = [line for line in table.splitlines()[2:] if line.startswith("|")]
    return [line.strip("|").split(" | ", 1)[1] for line in rows]


def _test_names(file: str) -> set[str]:
    tree = ast.parse((REPO / "tests" / file).read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_blog_script_row_is_guarded():
    rows = _blog_table_rows()
    assert len(rows) >= 9
    for row in rows:
        keys = [key for key in GUARDS if key in row]
        assert len(keys) == 1, f"README row without a guarding test (add it to GUARDS): {row}"
    assert all(any(key in row for row in rows) for key in GUARDS), "a GUARDS key no longer matches a README row"
    for guards in GUARDS.values():
        for guard in guards:
            file, name = guard.split("::")
            assert name in _test_names(file), f"{guard} does not exist"


def test_the_default_prompt_is_chinese():
    from offline_embft.generate.run import load_template

    template = load_template()
    text = re.sub(r"\{\w+\}|[\s\-]", "", template)
    cjk = sum("\u4e00" <= ch <= "\u9fff" for ch in text)
    assert cjk / len(text) > 0.6 and "{context}" in template and "{num_questions}" in template


def test_chunks_are_cut_by_llamaindex_sentence_splitter():
    from llama_index.core.node_parser import SentenceSplitter

    from offline_embft.ingest.chunking import make_splitter

    splitter = make_splitter(64, 8, list)
    assert isinstance(splitter, SentenceSplitter)
    text = "第一条 为了规范期货交易行为，制定本法。" * 20
    chunks = splitter.split_text(text)
    assert len(chunks) > 1 and all(len(chunk) <= 64 for chunk in chunks)


def test_nothing_imports_llamaindex_finetuning_but_its_own_engine(tmp_path):
    """llama-index-finetuning is deprecated upstream: only `--engine llamaindex` may import it."""
    code = (
        "import sys\n"
        "import offline_embft.cli, offline_embft.ingest.run, offline_embft.generate.run,"
        "offline_embft.train.embedder\n"
        "import offline_embft.evaluate.run, offline_embft.core.dataset\n"
        "print(sorted(m for m in sys.modules if m.startswith('llama_index.finetuning')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------------------------------------------------------
# Troubleshooting (docs/troubleshooting.md, linked from README): the truncation row quotes what doctor and evaluate
# print


def _troubleshooting_row(symptom_phrase: str) -> str:
    assert "(docs/troubleshooting.md)" in README, "README no longer links the troubleshooting page"
    (row,) = [line for line in TROUBLESHOOTING.splitlines() if line.startswith("|") and symptom_phrase in line]
    return row


def test_troubleshooting_truncation_row_quotes_doctor(tmp_path, minilm_path, no_caches):
    from test_doctor import healthy_config  # doctor's own CPU-demo setup: MiniLM, ict, chunks written

    from offline_embft import doctor

    row = _troubleshooting_row("max_seq_length")
    assert "`truncated 12.0% at 256 tokens`" in row and "ingest.chunk_size" in row
    long_chunk = "The shareholders' meeting consists of all shareholders. " * 40
    cfg = healthy_config(tmp_path, minilm_path, [long_chunk if i < 3 else "Short." for i in range(25)])
    check = {c.name: c for c in doctor.diagnose(cfg)}["tokenizer coverage"]
    assert check.verdict == doctor.WARN
    assert "truncated 12.0% at 256 tokens" in check.detail and "lower ingest.chunk_size" in check.detail


def test_troubleshooting_truncation_row_quotes_evaluate(tmp_path, minilm_path, caplog):
    from offline_embft.core.config import EvaluateConfig
    from offline_embft.core.dataset import QADataset
    from offline_embft.evaluate import run as evaluate

    row = _troubleshooting_row("max_seq_length")
    assert "`1 of 3 passages are longer than max_seq_length 256`" in row
    dataset = QADataset(
        queries={"q0": "股东会有哪些职权？", "q1": "期货交易遵循什么原则？", "q2": "保险合同是什么？"},
        corpus={
            "p0": "股东会行使下列职权。" * 80,  # far past MiniLM's 256 word pieces
            "p1": "期货交易应当遵循公开、公平、公正的原则。",
            "p2": "保险合同是投保人与保险人约定保险权利义务关系的协议。",
        },
        relevant_docs={"q0": ["p0"], "q1": ["p1"], "q2": ["p2"]},
    ).save(tmp_path / "ds.json")
    cfg = EvaluateConfig(dataset=str(dataset), models=[str(minilm_path)], bm25=False, out_dir=str(tmp_path / "out"))
    with caplog.at_level(logging.WARNING, logger="offline_embft.evaluate.run"):
        evaluate.run(cfg)
    assert "1 of 3 passages are longer than max_seq_length 256 and are cut when encoded" in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# The docs: every relative link lands; every benchmark says how to reproduce it; the README stays a user guide

DOCS = REPO / "docs"
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _outside_code(text: str) -> str:
    """The text with fenced code blocks and inline code removed (a `](x)` inside code is not a link)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (CJK kept), spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {_anchor(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def test_anchor_follows_github():
    assert _anchor("Vocabulary (`--extend-vocab auto|on|off`)") == "vocabulary---extend-vocab-autoonoff"
    assert _anchor("One article per chunk: the largest gain, and where the 0.75 target stands") == (
        "one-article-per-chunk-the-largest-gain-and-where-the-075-target-stands"
    )
    assert _anchor("Ingest: statute PDFs") == "ingest-statute-pdfs"


def test_every_relative_link_in_readme_and_docs_lands_on_a_file_and_heading():
    pages = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
    broken = []
    for page in pages:
        for target in _LINK.findall(_outside_code(page.read_text(encoding="utf-8"))):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_repository_file_the_docs_name_exists():
    """A module moved (offline_embft/clean.py → offline_embft/ingest/clean.py) leaves no stale path in the docs."""
    named = re.compile(r"\b(?:offline_embft|scripts|tests|configs|data)/[\w./-]+\.(?:py|yaml|md|sh|csv|json)\b")
    missing = []
    for page in [REPO / "README.md", *sorted(DOCS.glob("*.md"))]:
        prose = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)  # examples may invent
        missing += [f"{page.relative_to(REPO)}: {path}" for path in named.findall(prose) if not (REPO / path).exists()]
    assert not missing, "the docs name files that do not exist:\n" + "\n".join(missing)


def test_readme_is_a_user_guide_and_links_every_doc():
    assert len(README.splitlines()) <= 300, "README is a user guide: measurements go to docs/benchmarks.md"
    unlinked = [page.name for page in DOCS.glob("*.md") if f"(docs/{page.name})" not in README]
    assert not unlinked, f"README's 'Where each doc is' misses {unlinked}"


def test_readme_test_command_is_what_ci_runs():
    """README says its test command is what .ci/run runs: CI runs each of its make targets, in that order (and may
    run more, such as `make check`)."""
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    ci_targets = iter(line for line in ci if line.startswith("make "))
    block = README[README.index("## Two commands") :].split("```")[1]
    (readme_command,) = [line.split("#")[0].strip() for line in block.splitlines() if "what .ci/run runs" in line]
    readme_targets = [part.strip() for part in readme_command.split("&&")]
    assert readme_targets[-1] == "make test"
    assert all(target in ci_targets for target in readme_targets), f"{readme_command!r} is not what .ci/run runs"


def _benchmark_sections() -> dict[str, str]:
    text = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    parts = re.split(r"^## ", text, flags=re.M)[1:]
    return {part.splitlines()[0]: part for part in parts}


def test_every_benchmark_names_its_command_machine_and_commit():
    sections = _benchmark_sections()
    assert len(sections) >= 10
    for title, body in sections.items():
        assert re.search(r"`[^`]*(scripts/|make |offline-embft|\.ci/run|python )[^`]*`", body), f"{title}: no command"
        assert re.search(r"machine|dev box|GPU server", body, re.I), f"{title}: no machine"
        assert re.search(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b", body), f"{title}: no commit"


def test_readme_measurements_live_in_benchmarks():
    """The README's headline numbers are the benchmarks page's, not a second copy that drifts."""
    summary = README[README.index("## How good is it") :].split("\n## ")[0]
    assert "(docs/benchmarks.md)" in summary and len(summary.strip().splitlines()) <= 8
    benchmarks = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    for number in re.findall(r"\*\*(\d+\.\d+)x?\*\*", summary):
        assert number in benchmarks, f"README's {number} is not in docs/benchmarks.md"
    assert "| wall s" not in README and "load average" not in README, "a measured table crept back into README"


def test_allow_network_escape_hatch_switches_the_offline_variables_off_and_doctor_says_so(tmp_path, monkeypatch):
    """README's air-gap section: `OFFLINE_EMBFT_ALLOW_NETWORK=1` switches it all off (doctor then warns)."""
    from offline_embft.core import offline
    from offline_embft.doctor import WARN
    from offline_embft.doctor.system import check_offline

    assert f"`{offline.ALLOW_NETWORK_VAR}=1` switches it all off (doctor then warns)" in README
    code = "import json, os\nimport offline_embft.cli\nprint(json.dumps({k: os.environ.get(k) for k in %r}))\n"
    env = {k: v for k, v in os.environ.items() if k not in offline.OFFLINE_ENV}
    env[offline.ALLOW_NETWORK_VAR] = "1"
    done = subprocess.run(
        [sys.executable, "-c", code % sorted(offline.OFFLINE_ENV)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout.strip().splitlines()[-1]).values()) == {None}
    monkeypatch.setenv(offline.ALLOW_NETWORK_VAR, "1")
    check = check_offline()
    assert check.verdict == WARN and offline.ALLOW_NETWORK_VAR in check.detail


def test_readme_command_line_names_only_commands_and_options_the_cli_has():
    """Every `offline-embft COMMAND --option` of README's command-line block exists, and every command is listed."""
    import typer

    from offline_embft.cli import app

    group = typer.main.get_command(app)
    block = README[README.index("Every stage is also a\ncommand of its own:") :].split("```")[1]
    listed: dict[str, set[str]] = {}
    command = ""
    for line in block.splitlines():
        words = line.split("#")[0].split()
        if not words:
            continue
        if words[0] == "offline-embft":
            command = words[1]
            listed[command] = set()
        listed[command] |= {re.sub(r"[\[\]]", "", w).split("=")[0] for w in words if w.lstrip("[").startswith("--")}
    assert set(listed) == set(group.commands), "README's command list differs from the CLI's"
    for name, options in listed.items():
        known = {opt for param in group.commands[name].params for opt in param.opts}
        assert options <= known, f"offline-embft {name}: README names {sorted(options - known)}"


def test_readme_says_what_each_stage_entry_takes():
    """The issue's finding: README said every stage had `run(cfg) -> Path` while generate's takes files. Now it says
    which stage takes what; these are those signatures."""
    import importlib
    import inspect

    def params(module: str, name: str = "run") -> list[str]:
        signature = inspect.signature(getattr(importlib.import_module(f"offline_embft.{module}"), name))
        return [p.name for p in signature.parameters.values() if p.default is inspect.Parameter.empty]

    developers = README[README.index("For developers:") :]
    assert "`run(cfg) -> Path` for ingest, convert and evaluate" in developers
    for module in ("ingest.run", "convert.run", "evaluate.run", "train.embedder", "train.reranker", "serve.run"):
        assert params(module) == ["cfg"], module
    for module in ("ingest.run", "convert.run", "evaluate.run"):
        returns = inspect.signature(importlib.import_module(f"offline_embft.{module}").run).return_annotation
        assert returns in (Path, "Path"), module
    assert "generate's `run(cfg, chunks, out)`" in developers and "`run_many(cfg, jobs)`" in developers
    assert params("generate.run") == ["cfg", "chunks_path", "out_path"]
    assert params("generate.run", "run_many") == ["cfg", "jobs"]


def test_every_make_target_the_docs_name_exists():
    """`make serve`, `make install-offline` ...: every target README and the docs tell users to run is in Makefile."""
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M))
    targets |= set(re.search(r"^STAGES := (.*)$", makefile, flags=re.M).group(1).split())
    code = re.compile(r"`([^`\n]+)`|^```.*?^```", flags=re.S | re.M)  # inline code and fenced blocks
    named = set()
    for page in [REPO / "README.md", *sorted(DOCS.glob("*.md"))]:
        for match in code.finditer(page.read_text(encoding="utf-8")):
            named |= set(re.findall(r"(?:^|[\s;&(])make ([a-z][a-z-]*)", match.group(0), flags=re.M))
    assert {"demo", "test", "install", "all"} <= named
    assert named <= targets, f"the docs name make targets the Makefile lacks: {sorted(named - targets)}"
