"""The ONE stage graph: ``offline-embft all [--until STAGE]`` runs the stages in order, each in its own process,
skipping those whose outputs are fresh. The Makefile's stage targets are thin calls into it (``make generate`` →
``offline-embft all --until generate``), and ``make -n STAGE`` prints this graph's dry run.

A stage is stale when an output is missing, an input is newer than an output, or that stage's part of the config
changed since it last ran (its stamp file is rewritten only when the content changes).

Each stage runs as ``python -m offline_embft.cli <stage>`` in a child process: vLLM and training must not share one
process's GPU memory, and a crash in one stage leaves the finished ones' outputs untouched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from offline_embft import doctor
from offline_embft.core import gpu_compat, offline
from offline_embft.core.config import PipelineConfig, to_dict
from offline_embft.core.errors import UserError
from offline_embft.core.layout import Layout
from offline_embft.core.model_files import PACKAGE_PREFIX, RERANKER_FROM_EMBEDDING

logger = logging.getLogger(__name__)

STAMP_ROOT = Path(".make")
# Stage name → which config sections (or top-level keys) decide its output.
STAMP_KEYS: dict[str, tuple[str, ...]] = {
    "convert": ("embedding_model", "convert"),
    "ingest": ("ingest",),
    "generate": ("llm", "generate"),
    "train": ("train",),
    "train_reranker": ("reranker_model", "train_reranker"),
    "evaluate": ("evaluate",),
}


@dataclass
class Stage:
    """One step of the pipeline: a CLI command, the files it reads, and the files that prove it finished."""

    name: str
    args: list[str]
    inputs: list[Path] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)


def stamp_dir(config_path: str | Path | None, overrides: list[str]) -> Path:
    """Where the per-stage config stamps of this (config, overrides) combination live."""
    name = Path(config_path).stem if config_path else "defaults"
    if overrides:
        name += "-" + hashlib.sha1("\n".join(overrides).encode()).hexdigest()[:8]
    return STAMP_ROOT / name


def write_stamps(cfg: PipelineConfig, directory: Path) -> dict[str, Path]:
    """Write each stage's config slice to ``directory/<stage>.yaml``, touching only the files whose content changed."""
    data = to_dict(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    stamps = {}
    for stage, keys in STAMP_KEYS.items():
        text = yaml.safe_dump({key: data[key] for key in keys}, allow_unicode=True, sort_keys=True)
        stamps[stage] = _write_if_changed(directory / f"{stage}.yaml", text)
    stamps["documents"] = _write_if_changed(directory / "documents.txt", _document_listing(Path(cfg.ingest.input_dir)))
    return stamps


def _document_listing(input_dir: Path) -> str:
    """One line per input document (path, size, mtime): any added, removed or edited file changes it."""
    if not input_dir.is_dir():
        return ""
    files = sorted(p for p in input_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    return "".join(f"{p.relative_to(input_dir)}\t{p.stat().st_size}\t{p.stat().st_mtime_ns}\n" for p in files)


def _write_if_changed(path: Path, text: str) -> Path:
    """Rewrite a stamp only when its content differs, so its mtime marks the last real change."""
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def stages(cfg: PipelineConfig, stamps: dict[str, Path], cli_args: list[str]) -> list[Stage]:
    """The pipeline, in order. ``cli_args`` (``--config``/``--set``) are passed to every stage command."""
    layout = Layout.from_config(cfg)
    chunks = Path(cfg.ingest.out_dir)
    embed_src, embed_st, finetuned = Path(cfg.convert.model), Path(cfg.convert.out_dir), Path(cfg.train.out_dir)
    results = Path(cfg.evaluate.out_dir)
    base_models = [Path(m) for m in cfg.evaluate.models if Path(m) != finetuned]
    reranker_stages, reranker_outputs = [], []
    if cfg.reranker_model:
        reranked = Path(cfg.train_reranker.out_dir)
        reranker_outputs = [reranked / "config.json"]
        reranker_stages = [
            Stage(
                "train-reranker",
                ["train-reranker", *cli_args],
                [
                    layout.train_dataset,
                    layout.val_dataset,
                    finetuned / "modules.json",
                    *([] if cfg.reranker_model == RERANKER_FROM_EMBEDDING else [layout.reranker_src]),
                    stamps["train_reranker"],
                ],
                reranker_outputs,
            )
        ]
    return [
        Stage("convert", ["convert", *cli_args], [embed_src, stamps["convert"]], [embed_st / "modules.json"]),
        Stage(
            "ingest",
            ["ingest", *cli_args],
            [stamps["documents"], embed_st / "modules.json", stamps["ingest"]],
            [chunks / "stats.json"],
        ),
        Stage(
            "generate",
            ["generate", *cli_args],
            [chunks / "stats.json", stamps["generate"]],
            [layout.train_dataset, layout.val_dataset],
        ),
        Stage(
            "train",
            ["train", *cli_args],
            [layout.train_dataset, layout.val_dataset, embed_st / "modules.json", stamps["train"]],
            [finetuned / "modules.json"],
        ),
        *reranker_stages,
        Stage(
            "evaluate",
            ["evaluate", *cli_args],
            [
                Path(cfg.evaluate.dataset),
                finetuned / "modules.json",
                *base_models,
                *reranker_outputs,
                stamps["evaluate"],
                *([Path(cfg.evaluate.questions)] if cfg.evaluate.questions else []),
                *(Path(path) for path in cfg.evaluate.general),  # retention's general sets
            ],
            [results / "metrics.csv", results / "report.md"],
        ),
    ]


def _newest(path: Path) -> float:
    """Modification time of a file, or of the newest file below a directory (0 when missing)."""
    if path.is_file():
        return path.stat().st_mtime
    if path.is_dir():
        times = [p.stat().st_mtime for p in path.rglob("*") if p.is_file()]
        return max(times, default=path.stat().st_mtime)
    return 0.0


def is_fresh(stage: Stage) -> bool:
    """True when every output exists and none is older than any input."""
    if not all(out.exists() for out in stage.outputs):
        return False
    oldest_output = min(out.stat().st_mtime for out in stage.outputs)
    return all(_newest(source) <= oldest_output for source in stage.inputs)


Runner = Callable[[list[str]], int]


def run_in_child(args: list[str]) -> int:
    """Run ``offline-embft ARGS`` in a fresh Python process (its own GPU memory); return its exit code."""
    command = [sys.executable, "-m", "offline_embft.cli", *args]
    return subprocess.run(command, check=False, env=os.environ.copy()).returncode


def visible_gpu_ids() -> list[str]:
    """The GPUs a child process would see: ``CUDA_VISIBLE_DEVICES`` when set, else every GPU nvidia-smi lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [part.strip() for part in visible.split(",") if part.strip() and part.strip() != "-1"]
    gpus, _ = gpu_compat.read_nvidia_smi()
    return [str(gpu.index) for gpu in gpus]


def train_env(cfg: PipelineConfig) -> dict[str, str]:
    """Environment overrides for the train stage's process: the GPUs its ``train.nproc`` processes may use.

    One process that sees several GPUs makes the Hugging Face Trainer wrap the model in DataParallel: each step then
    splits the batch over the GPUs and the effective batch silently becomes batch × GPUs (transformers' Trainer,
    ``n_gpu > 1``). With ``train.nproc`` auto (one process per visible GPU) the train command launches torchrun
    itself and each process takes its own GPU (:mod:`offline_embft.train.distributed`): nothing to pin. An explicit N
    below the visible count sees the first N GPUs; N = 1 sees the first GPU only.
    """
    from offline_embft.train.distributed import resolve_nproc

    gpus = visible_gpu_ids()
    nproc = resolve_nproc(cfg.train, visible=len(gpus))
    if len(gpus) <= nproc:
        return {}
    if nproc > 1:
        return {"CUDA_VISIBLE_DEVICES": ",".join(gpus[:nproc])}
    logger.warning(
        "train runs on one GPU (CUDA_VISIBLE_DEVICES=%s) of the %d visible (%s) because train.nproc is 1: a single "
        "process on several GPUs would use DataParallel and silently train with batch %d × %d; set train.nproc=auto "
        "to train on all of them (torchrun, one process per GPU)",
        gpus[0],
        len(gpus),
        ",".join(gpus),
        cfg.train.batch_size,
        len(gpus),
    )
    return {"CUDA_VISIBLE_DEVICES": gpus[0]}


STAGE_ENV: dict[str, Callable[[PipelineConfig], dict[str, str]]] = {"train": train_env}


def _run_stage(args: list[str], runner: Runner, env: dict[str, str] | None = None) -> None:
    logger.info("$ %s", command_line(args))
    with offline.environment(env or {}):
        code = runner(args)
    if code != 0:
        raise UserError(
            f"stage `{args[0]}` failed (exit {code}); fix the error above and run again "
            "(finished stages are kept and skipped)"
        )


def preflight(cfg: PipelineConfig, cli_args: list[str], planned: list[str]) -> list[list[str]]:
    """The commands that run before the ``planned`` stages: ``download`` for a packaged model they need that is not
    copied yet, then ``doctor`` for those stages only; nothing when no stage will run.

    A model shipped in a Python package is copied offline by ``download``; a hub model must already be on disk,
    since this machine may be air-gapped — the error says how to get it there. Which stage needs which model is
    doctor's table (:data:`offline_embft.doctor.CHECKS`): `make ingest` on a workstation needs neither the LLM nor
    the reranker, nor the GPU they run on.

    Raises:
        UserError: a planned stage needs the embedding model (or the reranker), and it is neither on disk nor in a
            package.
    """
    if not planned:
        return []
    layout = Layout.from_config(cfg)
    commands = []
    packaged_embedding = cfg.embedding_model.startswith(PACKAGE_PREFIX)
    if doctor.needed("embedding model", planned):
        if packaged_embedding and not (layout.embedding_src / "config.json").is_file():
            commands.append(["download", *cli_args])
        elif not packaged_embedding and not layout.embedding_src.is_dir() and not layout.embedding_st.is_dir():
            raise UserError(
                f"embedding model {cfg.embedding_model} not found at {layout.embedding_src}; run `make download` "
                "on a connected machine and copy Models/ here (see README: the air-gap trip)"
            )
    needs_reranker = doctor.needed("reranker", planned)
    if needs_reranker and cfg.reranker_model and cfg.reranker_model != RERANKER_FROM_EMBEDDING:
        if cfg.reranker_model.startswith(PACKAGE_PREFIX):
            if not layout.reranker_src.is_dir() and ["download", *cli_args] not in commands:
                commands.append(["download", *cli_args])
        elif not layout.reranker_src.is_dir():
            raise UserError(
                f"reranker {cfg.reranker_model} not found at {layout.reranker_src}; run `make download` on a "
                'connected machine and copy Models/ here, or set reranker_model to "" to skip the reranker stage'
            )
    return [*commands, ["doctor", *cli_args, *(part for stage in planned for part in ("--stage", stage))]]


def select(all_stages: list[Stage], until: str | None) -> list[Stage]:
    """The stages up to and including ``until`` (all of them when None).

    Raises:
        UserError: ``until`` names no stage.
    """
    names = [stage.name for stage in all_stages]
    if until is None:
        return all_stages
    if until not in names:
        raise UserError(f"--until {until!r} is not a stage; use one of {', '.join(names)}")
    return all_stages[: names.index(until) + 1]


def plan(selected: list[Stage], force: bool = False) -> list[Stage]:
    """The stages that would run: the stale ones, and every one that reads a file a planned stage rewrites."""
    planned: list[Stage] = []
    rewritten: set[Path] = set()
    for stage in selected:
        if force or not is_fresh(stage) or rewritten.intersection(stage.inputs):
            planned.append(stage)
            rewritten.update(stage.outputs)
    return planned


def _cli_args(config_path: str | Path | None, overrides: list[str]) -> list[str]:
    """``--config``/``--set`` as passed to every stage command."""
    return (["--config", str(config_path)] if config_path else []) + [
        part for item in overrides for part in ("--set", item)
    ]


def command_line(args: list[str]) -> str:
    """How a stage command reads in the log and in a dry run."""
    return "offline-embft " + shlex.join(args)


def dry_run(
    cfg: PipelineConfig,
    config_path: str | Path | None = None,
    overrides: list[str] | None = None,
    force: bool = False,
    until: str | None = None,
) -> list[str]:
    """What :func:`run` would do, run nothing: the preflight and stage command lines, in order (``make -n``)."""
    overrides = list(overrides or [])
    cli_args = _cli_args(config_path, overrides)
    stamps = write_stamps(cfg, stamp_dir(config_path, overrides))
    planned = plan(select(stages(cfg, stamps, cli_args), until), force)
    try:
        checks = [command_line(args) for args in preflight(cfg, cli_args, [stage.name for stage in planned])]
    except UserError as exc:  # a dry run shows where the real run would stop, and what it would run after the fix
        checks = [f"# would stop here: {exc}"]
    return checks + [command_line(stage.args) for stage in planned]


def run(
    cfg: PipelineConfig,
    config_path: str | Path | None = None,
    overrides: list[str] | None = None,
    force: bool = False,
    until: str | None = None,
    runner: Runner = run_in_child,
) -> Path:
    """Run the pipeline (up to ``until``), skipping the stages whose outputs are fresh.

    Args:
        cfg: The resolved pipeline config.
        config_path: The YAML config the stages are given (``--config``).
        overrides: The ``--set`` overrides the stages are given.
        force: Redo every selected stage even if its output is fresh.
        until: The last stage to run (None: all of them, through evaluate).
        runner: Runs one CLI command and returns its exit code: a child process by default; tests pass an
            in-process runner so a network guard installed in the test process covers every stage.

    Returns:
        The last output of the last stage run: the report path for the whole pipeline.

    Raises:
        UserError: a model is missing, ``until`` names no stage, or a stage failed (its own error is printed above).
    """
    overrides = list(overrides or [])
    cli_args = _cli_args(config_path, overrides)
    stamps = write_stamps(cfg, stamp_dir(config_path, overrides))
    selected = select(stages(cfg, stamps, cli_args), until)
    planned = plan(selected, force)  # one decision: doctor checks for exactly the stages that run
    for args in preflight(cfg, cli_args, [stage.name for stage in planned]):
        _run_stage(args, runner)
    started = time.perf_counter()
    for stage in selected:
        if stage not in planned:
            logger.info("[%s] fresh, skipped", stage.name)
            continue
        stage_start = time.perf_counter()
        env = STAGE_ENV[stage.name](cfg) if stage.name in STAGE_ENV else {}
        _run_stage(stage.args, runner, env)
        # Like make's `touch $@`: a stage that copies files (convert's pass-through) keeps their old mtimes.
        for output in stage.outputs:
            if not output.exists():
                raise UserError(
                    f"stage `{stage.name}` finished but did not write {output}; run it alone with -v to see why"
                )
            os.utime(output)
        logger.info("[%s] done in %.1f s", stage.name, time.perf_counter() - stage_start)
    logger.info("pipeline finished in %.1f s", time.perf_counter() - started)
    return selected[-1].outputs[-1]


def summary(cfg: PipelineConfig) -> str:
    """The report's verdict and main table, followed by the paths of its files.

    Raises:
        UserError: there is no report yet.
    """
    results = Path(cfg.evaluate.out_dir)
    report = results / "report.md"
    if not report.is_file():
        raise UserError(f"no report at {report} yet; run `make all` (or `offline-embft evaluate`) first")
    files = [report, results / "report.png", results / "metrics.csv"]
    # The verdict and the main table come first in report.md; the rest (all metrics, paths) stays in the file.
    text = report.read_text(encoding="utf-8").split("\n![", 1)[0]
    lines = [text.rstrip(), ""]
    lines += [f"{path.name:<12} {path}" for path in files if path.exists()]
    return "\n".join(lines)
