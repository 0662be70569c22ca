"""The general retrieval sets retention is measured on (``general.sets``): each one listed with its size and source,
a missing or broken one named with the fix."""

from __future__ import annotations

from offline_embft.core.beir import MANIFEST, list_general, load_set, resolve_general, set_name
from offline_embft.core.config import PipelineConfig
from offline_embft.core.errors import UserError
from offline_embft.core.io import read_json
from offline_embft.doctor.lines import FAIL, OK, Check


def check_general(cfg: PipelineConfig) -> Check:
    """The configured general sets, present and readable (none configured: a line saying so, and any on disk)."""
    on_disk = {found.name: found for found in list_general(cfg.dataset_dir)}
    if not cfg.general.sets:
        unused = f"; {', '.join(on_disk)} in {cfg.dataset_dir}/general unused" if on_disk else ""
        return Check("general sets", OK, f"none configured (general.sets): no retention rows{unused}")
    listed, missing = [], []
    for ref in cfg.general.sets:
        path = resolve_general(ref, cfg.dataset_dir)
        found = on_disk.get(path.name) if path.parent.name == "general" else None
        if found is not None:
            listed.append(f"{found.name} ({found.queries} questions, {found.corpus} passages, {found.source})")
            continue
        try:
            data = load_set(path)
        except UserError as exc:
            missing.append(f"{ref}: {exc}")
            continue
        manifest = path / MANIFEST if path.is_dir() else None
        source = read_json(manifest).get("source", "your own") if manifest and manifest.is_file() else "your own"
        listed.append(f"{set_name(path)} ({len(data.queries)} questions, {len(data.corpus)} passages, {source})")
    if missing:
        return Check(
            "general sets",
            FAIL,
            f"{'; '.join(missing)} — run `offline-embft download` on a connected machine and carry "
            f"{cfg.dataset_dir}/general/ across (make bundle), or fix the path",
        )
    return Check("general sets", OK, "; ".join(listed))
