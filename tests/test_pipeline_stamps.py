"""What makes a stage stale: missing outputs, newer inputs, or a changed slice of the config."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from offline_embft import pipeline
from offline_embft.core.config import STAGES, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path, monkeypatch):
    """Every test runs in its own directory: pipeline.run writes its stamps under ./.make, never into the repo's."""
    monkeypatch.chdir(tmp_path)


def _cfg(tmp_path, *overrides):
    sets = [f"dataset_dir={tmp_path / 'Dataset'}", f"models_dir={tmp_path / 'Models'}", *overrides]
    return load_config(REPO / "configs" / "cpu.yaml", sets).resolve()


def test_stamps_change_only_with_their_stage_config(tmp_path):
    directory = tmp_path / "stamps"
    first = pipeline.write_stamps(_cfg(tmp_path), directory)
    before = {name: path.stat().st_mtime_ns for name, path in first.items()}
    for path in first.values():
        os.utime(path, ns=(1, 1))  # make any rewrite visible
    again = pipeline.write_stamps(_cfg(tmp_path, "train.lr=3e-5"), directory)
    changed = {name for name, path in again.items() if path.stat().st_mtime_ns != 1}
    assert changed == {"train"}, f"only train's stamp should change, got {changed} (before: {before})"


def test_documents_stamp_tracks_added_and_removed_files(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("甲", encoding="utf-8")
    cfg = _cfg(tmp_path, f"ingest.input_dir={docs}")
    stamp = pipeline.write_stamps(cfg, tmp_path / "s")["documents"]
    first = stamp.read_text(encoding="utf-8")
    (docs / "b.md").write_text("乙", encoding="utf-8")
    second = pipeline.write_stamps(cfg, tmp_path / "s")["documents"].read_text(encoding="utf-8")
    (docs / "a.txt").unlink()
    third = pipeline.write_stamps(cfg, tmp_path / "s")["documents"].read_text(encoding="utf-8")
    assert "a.txt" in first and "b.md" in second and "a.txt" not in third


def test_freshness_follows_inputs_and_outputs(tmp_path):
    source, output = tmp_path / "in.txt", tmp_path / "out" / "result.json"
    stage = pipeline.Stage("x", ["x"], [source], [output])
    source.write_text("1", encoding="utf-8")
    assert not pipeline.is_fresh(stage), "a missing output is stale"
    output.parent.mkdir()
    output.write_text("{}", encoding="utf-8")
    os.utime(source, (100, 100))
    os.utime(output, (200, 200))
    assert pipeline.is_fresh(stage)
    os.utime(source, (300, 300))
    assert not pipeline.is_fresh(stage), "an input newer than the output is stale"


def test_stage_order_and_separate_processes(tmp_path):
    cfg = _cfg(tmp_path)
    stamps = pipeline.write_stamps(cfg, tmp_path / "s")
    names = [stage.name for stage in pipeline.stages(cfg, stamps, ["--config", "c.yaml"])]
    assert names == ["convert", "ingest", "generate", "train", "train-reranker", "evaluate"]
    assert tuple(names) == STAGES, "config.STAGES (what doctor's table and `doctor --stage` name) is this graph"
    assert pipeline.run.__defaults__[-1] is pipeline.run_in_child, "stages must run in child processes by default"


def test_failed_stage_is_one_line_and_stops(tmp_path):
    cfg = _cfg(tmp_path)
    seen: list[list[str]] = []

    def runner(args):
        seen.append(args)
        if args[0] == "convert":
            Path(cfg.convert.out_dir).mkdir(parents=True)
            (Path(cfg.convert.out_dir) / "modules.json").write_text("[]", encoding="utf-8")
        return 0 if args[0] in ("download", "doctor", "convert") else 3

    with pytest.raises(pipeline.UserError, match="stage `ingest` failed"):
        pipeline.run(cfg, config_path=REPO / "configs" / "cpu.yaml", runner=runner, force=True)
    assert [a[0] for a in seen] == ["download", "doctor", "convert", "ingest"]


def test_stage_that_writes_nothing_is_reported(tmp_path):
    cfg = _cfg(tmp_path)
    with pytest.raises(pipeline.UserError, match="stage `convert` finished but did not write"):
        pipeline.run(cfg, config_path=REPO / "configs" / "cpu.yaml", runner=lambda args: 0, force=True)


def test_pipeline_stamps_land_in_the_working_directory(tmp_path):
    cfg = _cfg(tmp_path)
    with pytest.raises(pipeline.UserError):
        pipeline.run(cfg, config_path=REPO / "configs" / "cpu.yaml", runner=lambda args: 0, force=True)
    written = {p.name for p in (tmp_path / ".make" / "cpu").iterdir()}
    assert {f"{name}.yaml" for name in pipeline.STAMP_KEYS} <= written


def _make(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``make ARGS`` on a copy of the Makefile and configs (stamps land in tmp), with the CLI of the interpreter
    running the tests (this checkout; CI's venv may live elsewhere)."""
    if not (tmp_path / "Makefile").exists():
        shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
        shutil.copytree(REPO / "configs", tmp_path / "configs")
        (tmp_path / "data").symlink_to(REPO / "data")
    env = {
        **os.environ,
        "MAKEFLAGS": "",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    cli = f"CLI={shlex.quote(sys.executable)} -m offline_embft.cli"
    return subprocess.run(["make", *args, cli], cwd=tmp_path, capture_output=True, text=True, check=False, env=env)


def _stage_lines(stdout: str) -> list[str]:
    """The stage commands a dry run prints, in order (preflight left out)."""
    names = ("convert", "ingest", "generate", "train", "train-reranker", "evaluate")
    return [
        line.split()[1]
        for line in stdout.splitlines()
        if line.startswith("offline-embft ") and line.split()[1] in names
    ]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_dry_run_shows_stage_order(tmp_path):
    out = _make(tmp_path, "-n", "demo")
    assert out.returncode == 0, out.stderr
    assert _stage_lines(out.stdout) == ["convert", "ingest", "generate", "train", "train-reranker", "evaluate"]
    assert not (tmp_path / "Dataset").exists(), "a dry run writes no stage output"


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_generate_asks_the_llm_stage_once(tmp_path):
    """The old Makefile had one file rule per dataset: `make generate` ran generate twice (the LLM loaded twice)."""
    out = _make(tmp_path, "-n", "generate", "CONFIG=configs/cpu.yaml")
    assert out.returncode == 0, out.stderr
    assert _stage_lines(out.stdout) == ["convert", "ingest", "generate"]
    assert "--until generate" in out.stdout


def test_until_runs_the_stages_up_to_it_and_a_dry_run_follows_the_graph(tmp_path):
    cfg = _cfg(tmp_path)
    config = REPO / "configs" / "cpu.yaml"
    seen: list[str] = []

    def runner(args):
        seen.append(args[0])
        outputs = {s.name: s.outputs for s in pipeline.stages(cfg, pipeline.write_stamps(cfg, tmp_path / "s"), [])}
        for output in outputs.get(args[0], []):
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text("{}", encoding="utf-8")
        return 0

    assert (
        pipeline.run(cfg, config_path=config, until="ingest", runner=runner) == Path(cfg.ingest.out_dir) / "stats.json"
    )
    assert seen == ["download", "doctor", "convert", "ingest"]
    dry = pipeline.dry_run(cfg, config_path=config, until="train")
    assert [line.split()[1] for line in dry] == ["download", "doctor", "generate", "train"], "fresh stages are skipped"
    os.utime(Path(cfg.convert.out_dir) / "modules.json")  # convert's output newer: everything after it is stale
    stale = [line.split()[1] for line in pipeline.dry_run(cfg, config_path=config, until="generate")]
    assert stale == ["download", "doctor", "ingest", "generate"]
    with pytest.raises(pipeline.UserError, match="--until 'report' is not a stage; use one of convert"):
        pipeline.run(cfg, config_path=config, until="report", runner=runner)


def test_gpu_config_until_ingest_checks_only_what_its_stages_need(tmp_path, minilm_path, monkeypatch, no_caches):
    """`make ingest` on a CPU workstation with the GPU server's config (vLLM, Qwen3, a reranker, none of them here):
    doctor checks convert and ingest only and passes; `--until generate` still stops at doctor's GPU and LLM lines."""
    import torch
    from typer.testing import CliRunner

    from offline_embft.cli import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # this CPU machine, on a GPU CI runner too
    docs = tmp_path / "docs"
    docs.mkdir()
    text = "The shareholders' meeting consists of all shareholders and is the organ of authority of the company.\n"
    (docs / "company.txt").write_text(text * 5, encoding="utf-8")
    config = REPO / "configs" / "default.yaml"
    overrides = [
        f"dataset_dir={tmp_path / 'Dataset'}",
        f"models_dir={tmp_path / 'Models'}",
        f"results_dir={tmp_path / 'results'}",
        f"embedding_model={minilm_path}",  # the one model this workstation has
        f"ingest.input_dir={docs}",
    ]
    cfg = load_config(config, overrides).resolve()
    assert cfg.generate.backend == "vllm" and cfg.llm and cfg.reranker_model, "the GPU config"
    outputs = {s.name: s.outputs for s in pipeline.stages(cfg, pipeline.write_stamps(cfg, tmp_path / "s"), [])}
    calls: list[list[str]] = []
    screens: list[str] = []

    def runner(args: list[str]) -> int:
        """The real doctor, in-process; the stages write their outputs and nothing else."""
        calls.append(args)
        if args[0] == "doctor":
            result = CliRunner().invoke(app, args)
            screens.append(result.output)
            return result.exit_code
        for output in outputs[args[0]]:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text("{}", encoding="utf-8")
        return 0

    pipeline.run(cfg, config_path=config, overrides=overrides, until="ingest", runner=runner)
    assert [args[0] for args in calls] == ["doctor", "convert", "ingest"]
    assert calls[0][-4:] == ["--stage", "convert", "--stage", "ingest"]
    assert "checked for convert, ingest; left out" in screens[0] and "FAIL" not in screens[0], screens[0]
    assert "OK    embedding model" in screens[0] and "tokenizer coverage" in screens[0]

    calls.clear()
    pipeline.run(cfg, config_path=config, overrides=overrides, until="ingest", runner=runner)
    assert calls == [], "nothing stale: no stage runs, so there is nothing to check"

    dry = pipeline.dry_run(cfg, config_path=config, overrides=overrides, until="generate")
    assert dry[0].startswith("offline-embft doctor --config") and dry[0].endswith("--stage generate"), dry
    with pytest.raises(pipeline.UserError, match="stage `doctor` failed"):
        pipeline.run(cfg, config_path=config, overrides=overrides, until="generate", runner=runner)
    assert [args[0] for args in calls] == ["doctor"], "generate must not start on a machine doctor fails"
    assert "FAIL  llm" in screens[-1], screens[-1]
    # The GPU line fails only for a vLLM that needs one: vLLM's CPU build (what `make install` puts on a machine
    # without a GPU) generates on this workstation's CPU, so there doctor only warns.
    from offline_embft.generate.llm.vllm_backend import VllmLLM

    gpu_line = "FAIL  gpu / cuda" if VllmLLM.needs_gpu else "WARN  gpu / cuda"
    assert gpu_line in screens[-1], screens[-1]
