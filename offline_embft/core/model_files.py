"""Models on disk: where a model reference lives, and whether its files are all there (the bottom floor).

- :func:`locate` resolves a model reference (``org/name``, ``package:NAME`` or a path) to the directory that holds
  its files: ``Models/`` first, then the ModelScope cache (old ``org/bge-small-en-v1___5`` and new
  ``org--name/snapshots/<rev>`` layouts) and the Hugging Face cache (``models--org--name/snapshots/<rev>``).
  Pure filesystem checks, no heavy imports: :func:`offline_embft.core.layout.model_dir` calls it.
- :func:`missing_files` says exactly which files a model directory lacks (config, tokenizer, every weight shard
  named in the index), so a half-finished download is caught before a GPU job trips over it.
- :func:`transformer_dir`, :func:`st_pooling` and :func:`st_max_seq_length` read a sentence-transformers
  directory's layout without loading it.

Downloading lives in :mod:`offline_embft.convert.download`, the convert stage in :mod:`offline_embft.convert.run`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offline_embft.core.errors import UserError
from offline_embft.core.io import read_json

logger = logging.getLogger(__name__)

# A model shipped inside an installed Python package: ``package:NAME``.
PACKAGE_PREFIX = "package:"
# reranker_model value meaning "a cross-encoder initialised from this run's fine-tuned embedding model" (CPU demo):
# its encoder already reads the corpus (vocabulary extension included); only the one-score head starts fresh.
RERANKER_FROM_EMBEDDING = "finetuned-embedding"

# Some models live under another owner on ModelScope than on Hugging Face. The config keeps the Hugging Face id
# (what model cards and papers cite, and where Models/ puts it); downloads ask ModelScope for its own id.
MODELSCOPE_IDS: dict[str, str] = {
    "maidalun1020/bce-embedding-base_v1": "maidalun/bce-embedding-base_v1",
    "maidalun1020/bce-reranker-base_v1": "maidalun/bce-reranker-base_v1",
}

# Any one of these is a usable tokenizer (vocab.json only together with merges.txt: BPE needs both).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "sentencepiece.bpe.model", "spiece.model", "tokenizer.model")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ---------------------------------------------------------------------------------------------------------------
# Where a model is


@dataclass(frozen=True)
class Located:
    """Where a model reference resolves to.

    Attributes:
        path: the directory holding the model files (it may not exist yet).
        home: where the model belongs under ``models_dir`` (download target; its ``-st`` conversion goes beside it).
            Equal to ``path`` unless the model was found in a download cache.
        source: ``models_dir``, ``path``, ``package``, ``modelscope cache``, ``huggingface cache`` or ``missing``.
    """

    path: Path
    home: Path
    source: str


def is_model_dir(path: Path) -> bool:
    """A directory with a Hugging Face ``config.json`` or a sentence-transformers ``modules.json``."""
    return (path / "config.json").is_file() or (path / "modules.json").is_file()


def is_hub_id(ref: str) -> bool:
    """``org/name`` that is not an existing path."""
    return bool(_HUB_ID.match(ref)) and not Path(ref).exists()


def _snapshot(repo: Path) -> Path | None:
    """The model directory inside a cache repository root (``.../snapshots/<rev>``), preferring the pinned ref."""
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    preferred = []
    ref_file = repo / "refs" / "main"  # Hugging Face records the revision `main` points to
    if ref_file.is_file():
        preferred.append(snapshots / ref_file.read_text(encoding="utf-8").strip())
    preferred += [snapshots / "master", snapshots / "main"]  # ModelScope's default revision is `master`
    for candidate in preferred:
        if is_model_dir(candidate):
            return candidate
    found = [p for p in snapshots.iterdir() if p.is_dir() and is_model_dir(p)]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _layouts(root: Path, model_id: str) -> Iterator[Path]:
    """Every place a download tool may have put ``model_id`` under ``root``, most likely first."""
    org, name = model_id.split("/", 1)
    masked = name.replace(".", "___")  # ModelScope stores dots in names as ___
    yield from (
        root / org / name,
        root / org / masked,
        root / "models" / org / masked,  # ModelScope SDK <= 1.37 with MODELSCOPE_CACHE set
        root / "hub" / "models" / org / masked,  # ModelScope SDK <= 1.37 default (~/.cache/modelscope)
        root / "hub" / org / masked,  # older ModelScope SDKs
        root / "hub" / org / name,
        root / "models" / org / name,
    )
    for repo in (
        root / "models" / f"{org}--{name}",  # ModelScope >= 1.38 (modelscope_hub)
        root / f"models--{org}--{name}",  # Hugging Face hub cache (HF_HUB_CACHE), or a copy of one in Models/
        root / "hub" / f"models--{org}--{name}",  # HF_HOME
        root / "hub" / "models" / f"{org}--{name}",
    ):
        snapshot = _snapshot(repo)
        if snapshot is not None:
            yield snapshot


def cache_roots() -> list[tuple[str, Path]]:
    """The download caches on this machine, as (label, root), from the environment and the usual defaults."""
    home = Path.home()
    xdg = Path(os.environ.get("XDG_CACHE_HOME", home / ".cache"))
    roots = [("modelscope cache", os.environ.get("MODELSCOPE_CACHE")), ("modelscope cache", xdg / "modelscope")]
    roots += [
        ("huggingface cache", os.environ.get("HF_HUB_CACHE")),
        ("huggingface cache", os.environ.get("HUGGINGFACE_HUB_CACHE")),
        ("huggingface cache", os.environ.get("HF_HOME")),
        ("huggingface cache", xdg / "huggingface"),
    ]
    seen: set[Path] = set()
    result = []
    for label, root in roots:
        if not root:
            continue
        path = Path(root).expanduser()
        if path not in seen and path.is_dir():
            seen.add(path)
            result.append((label, path))
    return result


def _home_of_cache_dir(path: Path, models_dir: Path) -> Path:
    """``Models/org/name`` for a cache repository root named ``models--org--name`` or ``org--name``."""
    name = path.name.removeprefix("models--")
    if "--" in name:
        org, _, rest = name.partition("--")
        return models_dir / org / rest
    return path


def locate(ref: str, models_dir: str | Path = "Models") -> Located:
    """Resolve a model reference to the directory holding its files, searching the layouts users actually have.

    - a path: itself; a cache repository root (``models--org--name``, ``org--name``) resolves to its snapshot;
    - ``package:NAME``: ``models_dir/NAME`` (``download`` copies it there from the installed package);
    - ``org/name``: ``models_dir`` first, then the ModelScope and Hugging Face caches, under the id and its
      ModelScope alias; when nowhere, ``models_dir/org/name`` (where ``download`` will put it).

    Never raises and never touches the network: callers decide what a missing model means.
    """
    models_dir = Path(models_dir)
    if not ref:
        return Located(Path(ref), Path(ref), "missing")
    if ref.startswith(PACKAGE_PREFIX):
        path = models_dir / ref[len(PACKAGE_PREFIX) :]
        return Located(path, path, "package" if path.exists() else "missing")
    path = Path(ref).expanduser()
    if not is_hub_id(ref):
        if "/" not in ref and not path.exists() and not ref.startswith((".", "~")):
            path = models_dir / ref  # a bare name lives under Models/
        if path.is_dir() and not is_model_dir(path):
            snapshot = _snapshot(path)
            if snapshot is not None:
                return Located(snapshot, _home_of_cache_dir(path, models_dir), "path")
        return Located(path, path, "path" if path.exists() else "missing")
    home = models_dir / ref
    ids = list(dict.fromkeys([ref, MODELSCOPE_IDS.get(ref, ref)]))
    for label, root in [("models_dir", models_dir), *cache_roots()]:
        for model_id in ids:
            for candidate in _layouts(root, model_id):
                if is_model_dir(candidate):
                    return Located(candidate, home, label)
    return Located(home, home, "missing")


# ---------------------------------------------------------------------------------------------------------------
# Is it complete


def has_tokenizer(path: Path) -> bool:
    """Whether ``path`` holds a usable tokenizer: one of :data:`TOKENIZER_FILES`, or BPE's vocab.json + merges.txt."""
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        return True
    return any((path / name).is_file() for name in TOKENIZER_FILES)


def _hf_missing(path: Path) -> list[str]:
    """What a Hugging Face model directory lacks: config, tokenizer, weights (every shard named in the index)."""
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not has_tokenizer(path):
        missing.append(f"tokenizer (one of {', '.join(TOKENIZER_FILES)}, or vocab.json + merges.txt)")
    indexes = [path / name for name in WEIGHT_INDEXES if (path / name).is_file()]
    if indexes:
        for index in indexes:
            try:
                shards = sorted(set(read_json(index).get("weight_map", {}).values()))
            except (OSError, ValueError):
                missing.append(f"{index.name} (unreadable)")
                continue
            if not shards:
                missing.append(f"{index.name} (names no weight shards)")
            for shard in shards:
                file = path / shard
                if not file.is_file() or file.stat().st_size == 0:
                    missing.append(f"{shard} (named in {index.name})")
                elif problem := weights_problem(file):
                    missing.append(f"{shard} ({problem})")
    else:
        present = [path / n for n in WEIGHT_FILES if (path / n).is_file()]
        if not present:
            missing.append(f"weights ({' or '.join(WEIGHT_FILES)}, or a sharded *.index.json)")
        elif all(p.stat().st_size == 0 for p in present):
            missing.append(f"{present[0].name} (empty file)")
        else:
            missing += [f"{p.name} ({problem})" for p in present if (problem := weights_problem(p))]
    return missing


def weights_problem(file: Path) -> str | None:
    """Why a weight file is cut short (None: its size is what it declares).

    A safetensors file declares its size in its own header (8-byte length, JSON with every tensor's byte range),
    so an interrupted download or a copy cut short is caught without hashing gigabytes. A ``.bin`` saved by
    ``torch.save`` is a zip archive whose directory sits at its very end, which a truncated file lacks.
    """
    size = file.stat().st_size
    if file.suffix == ".safetensors":
        try:
            with file.open("rb") as handle:
                length = int.from_bytes(handle.read(8), "little")
                if size < 8 or length > size - 8:
                    return f"truncated: {size} bytes, not even its header"
                header = json.loads(handle.read(length))
        except (OSError, ValueError):
            return "unreadable safetensors header"
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
        expected = 8 + length + max(ends, default=0)
        if size != expected:
            return f"truncated: {size} of {expected} bytes" if size < expected else f"{size} bytes, not {expected}"
        return None
    if file.suffix == ".bin":
        with file.open("rb") as handle:
            zipped = handle.read(2) == b"PK"
        if zipped and not zipfile.is_zipfile(file):
            return "truncated: its zip directory is missing"
    return None


def transformer_dir(path: Path) -> Path:
    """The Hugging Face model inside a sentence-transformers directory: where modules.json puts its Transformer."""
    modules = path / "modules.json"
    if not modules.is_file():
        return path
    for module in read_json(modules):
        if str(module.get("type", "")).endswith("Transformer"):
            return path / module.get("path", "")
    return path


def missing_files(path: str | Path) -> list[str]:
    """Everything a model directory lacks to be loaded offline; an empty list means complete.

    Works on a Hugging Face checkout (config.json, tokenizer, weights and every shard its index names) and on a
    sentence-transformers directory (each module directory in modules.json, and the Transformer module's files).
    """
    path = Path(path)
    if not path.is_dir():
        return [f"the directory itself ({path})"]
    modules = path / "modules.json"
    if not modules.is_file():
        return _hf_missing(path)
    try:
        entries = read_json(modules)
    except (OSError, ValueError):
        return ["modules.json (unreadable)"]
    missing = []
    for module in entries:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        folder = path / module.get("path", "")
        # Normalize has no files (its folder is often absent); every other module keeps its config in its folder.
        if kind != "Normalize" and not folder.is_dir():
            missing.append(f"{module.get('path')}/ (named in modules.json)")
        elif kind == "Pooling" and not (folder / "config.json").is_file():
            missing.append(f"{module.get('path')}/config.json")
    inner = transformer_dir(path)
    prefix = "" if inner == path else f"{inner.name}/"
    return missing + [prefix + item for item in _hf_missing(inner)]


def check_complete(path: str | Path, what: str = "model") -> Path:
    """Return ``path`` if the model there is complete, else raise one line naming what is missing."""
    missing = missing_files(path)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(f"{what} at {path} is incomplete: missing {shown}; run `offline-embft download` again")
    return Path(path)


def tokenizer_dir(model_dir: str | Path) -> Path:
    """The folder holding the tokenizer: the model dir itself, or its sentence-transformers Transformer module.

    Raises:
        UserError: the directory is missing or holds no tokenizer.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"model directory {model_dir} not found; run `offline-embft download` or fix the path")
    for candidate in dict.fromkeys((transformer_dir(model_dir), model_dir)):
        if has_tokenizer(candidate):
            return candidate
    names = ", ".join(TOKENIZER_FILES[:3])
    raise UserError(f"{model_dir} has no tokenizer files ({names}); is the download complete?")


_ST_HINT = "pass a sentence-transformers model directory (written by `offline-embft convert` or `train`)"


def check_st_dir(path: str | Path, allow_raw: bool = False) -> Path:
    """Fail early, before any heavy import, on a path that cannot be a sentence-transformers model.

    A raw Hugging Face checkpoint (config.json, no modules.json) would load with MEAN pooling and no normalisation,
    silently — wrong for CLS models such as BCE/BGE — so it is refused unless ``allow_raw`` (evaluate may compare
    one on purpose; it is warned about when loaded).

    Raises:
        UserError: the directory is missing, holds no model, or is a raw checkpoint and ``allow_raw`` is False.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"model directory {path} not found; run `offline-embft download` or {_ST_HINT}")
    if (path / "modules.json").is_file():
        return path
    if not (path / "config.json").is_file():
        raise UserError(f"{path} has neither modules.json nor config.json, so it is not a model; {_ST_HINT}")
    if not allow_raw:
        raise UserError(
            f"{path} is a Hugging Face model without sentence-transformers files (modules.json); "
            f"run `offline-embft convert {path} --out {path}-st` first and use that"
        )
    return path


def load_sentence_transformer(path: str | Path, device: str | None = None, allow_raw: bool = False) -> Any:
    """Load a local sentence-transformers model (no hub access), or raise one line saying why it cannot be loaded.

    Args:
        path: The model directory.
        device: Where to load it (None: sentence-transformers picks, the GPU when there is one).
        allow_raw: Accept a raw Hugging Face checkpoint, with a warning (see :func:`check_st_dir`).

    Returns:
        The ``SentenceTransformer``.

    Raises:
        UserError: see :func:`check_st_dir`; or the directory does not load.
    """
    path = check_st_dir(path, allow_raw)
    if not (path / "modules.json").is_file():
        logger.warning(
            "%s is not in sentence-transformers layout: it loads with MEAN pooling, which is wrong for CLS models "
            "such as BCE/BGE; run `offline-embft convert` first",
            path,
        )
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(str(path), device=device, local_files_only=True)
    except Exception as exc:  # any failure here means "this directory is not a usable model"
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise UserError(
            f"model directory {path} does not load with sentence-transformers "
            f"({type(exc).__name__}{': ' + reason if reason else ''}); check that it is a complete model directory"
        ) from None


# ---------------------------------------------------------------------------------------------------------------
# Hub ids and sentence-transformers layout


def hub_id(ref: str) -> str:
    """A model reference as a hub id: Qwen presets (``Qwen3-8B``) get their ``Qwen/`` owner."""
    if "/" not in ref and ref.lower().startswith("qwen"):
        return f"Qwen/{ref}"
    return ref


def st_pooling(path: Path) -> tuple[str | None, bool, list[str]]:
    """(pooling mode, has Normalize, other module types) of a sentence-transformers directory."""
    mode: str | None = None
    normalize = False
    others = []
    for module in read_json(path / "modules.json"):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Pooling":
            config = read_json(path / module.get("path", "") / "config.json")
            mode = config.get("pooling_mode")
            if isinstance(mode, list):
                mode = "+".join(mode)
            if mode is None:  # legacy keys: pooling_mode_cls_token, pooling_mode_mean_tokens, ...
                on = [
                    k.removeprefix("pooling_mode_") for k, v in config.items() if k.startswith("pooling_mode_") and v
                ]
                names = {"cls_token": "cls", "mean_tokens": "mean", "max_tokens": "max", "lasttoken": "lasttoken"}
                mode = "+".join(names.get(k, k) for k in on) or None
        elif kind == "Normalize":
            normalize = True
        elif kind != "Transformer":
            others.append(kind)
    return mode, normalize, others


def st_max_seq_length(path: str | Path) -> int | None:
    """The max_seq_length a sentence-transformers model truncates at.

    sentence-transformers 5 writes it to sentence_bert_config.json; version 6 keeps it as the tokenizer's
    model_max_length instead.
    """
    path = Path(path)
    inner = transformer_dir(path)
    for config in (inner / "sentence_bert_config.json", path / "sentence_bert_config.json"):
        if config.is_file() and read_json(config).get("max_seq_length"):
            return int(read_json(config)["max_seq_length"])
    tokenizer_config = inner / "tokenizer_config.json"
    if tokenizer_config.is_file():
        declared = read_json(tokenizer_config).get("model_max_length")
        if isinstance(declared, int) and 0 < declared < 1_000_000:
            return declared
    return None
