"""Doctor checks of the machine itself: Python, the installed packages, free disk, the offline variables."""

from __future__ import annotations

import importlib.metadata as metadata
import os
import platform
import shutil
import sys
from pathlib import Path

from offline_embft.core import offline
from offline_embft.core.config import PipelineConfig
from offline_embft.core.model_files import locate
from offline_embft.doctor.lines import FAIL, GIB, OK, WARN, Check

# Packages every stage needs (distribution names), then the ones only some stages or machines need.
REQUIRED = ("torch", "transformers", "sentence-transformers", "llama-index-core", "pypdf", "jieba", "bm25s")
OPTIONAL = ("modelscope", "vllm", "openai", "accelerate")


def installed_version(dist: str) -> str | None:
    """A distribution's version from its metadata (nothing is imported); None when it is not installed."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def check_python() -> Check:
    """Python 3.10 or newer."""
    version = platform.python_version()
    verdict = OK if sys.version_info >= (3, 10) else FAIL
    return Check("python", verdict, f"{version} ({sys.executable})" + ("" if verdict == OK else "; need 3.10+"))


def check_packages() -> Check:
    """Versions of the key packages (from their metadata: nothing is imported)."""
    found = {dist: installed_version(dist) for dist in (*REQUIRED, *OPTIONAL)}
    missing = [dist for dist in REQUIRED if not found[dist]]
    shown = ", ".join(f"{dist} {version}" for dist, version in found.items() if version)
    if missing:
        return Check("packages", FAIL, f"missing {', '.join(missing)}: run `make install-offline`; have {shown}")
    return Check("packages", OK, shown)


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _dir_size(path: Path) -> int:
    if not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def check_disk(cfg: PipelineConfig) -> Check:
    """Free space where models, datasets and results go, against a rough need.

    Training keeps the best checkpoint plus the last ones (about three copies of the embedding model with optimizer
    state counted once), plus the converted copy and a margin for datasets and results.
    """
    model_bytes = _dir_size(locate(cfg.embedding_model, cfg.models_dir).path) or 1 * GIB
    need = 4 * model_bytes + 1 * GIB
    places: dict[int, tuple[Path, int]] = {}
    for folder in (cfg.models_dir, cfg.dataset_dir, cfg.results_dir):
        anchor = _existing_ancestor(Path(folder))
        places.setdefault(anchor.stat().st_dev, (anchor, shutil.disk_usage(anchor).free))
    parts = [f"{free / GIB:.1f} GiB free at {anchor}" for anchor, free in places.values()]
    lowest = min(free for _, free in places.values())
    detail = f"{'; '.join(parts)}; outputs need about {need / GIB:.1f} GiB"
    if lowest < model_bytes + GIB // 2:
        return Check("disk", FAIL, detail)
    return Check("disk", OK if lowest >= need else WARN, detail)


def check_offline() -> Check:
    """The no-network variables (set by the package on import) and whether the user lifted them."""
    status = offline.status()
    off = [key for key, (_, ok) in status.items() if not ok]
    if os.environ.get(offline.ALLOW_NETWORK_VAR) == "1":
        return Check("offline env", WARN, f"{offline.ALLOW_NETWORK_VAR}=1: network allowed; {len(off)} variables off")
    if off:
        return Check("offline env", WARN, f"not in force: {', '.join(off)}")
    proxies = [key for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy") if os.environ.get(key)]
    extra = f"; proxy variables set ({', '.join(proxies)}) but unused" if proxies else ""
    return Check("offline env", OK, f"{len(status)}/{len(status)} variables set (HF_HUB_OFFLINE=1, ...){extra}")
