"""The convert stage: any Hugging Face encoder → a sentence-transformers model (Transformer → Pooling → Normalize),
proved numerically against a raw transformers forward pass."""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offline_embft.core.errors import UserError
from offline_embft.core.io import atomic_dir, read_json, write_json
from offline_embft.core.model_files import locate, missing_files, st_max_seq_length, st_pooling, transformer_dir

if TYPE_CHECKING:
    from offline_embft.core.config import ConvertConfig

logger = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class Plan:
    """What convert will do with one source model.

    Attributes:
        src: The source model directory.
        out: The output directory.
        kind: ``hf`` (a raw Hugging Face encoder) or ``st`` (already sentence-transformers).
        hf_dir: The Hugging Face model inside ``src`` (``src`` itself, or its Transformer module).
        action: ``converted`` (raw encoder), ``repooled`` (another pooling asked for) or ``copied`` (kept as is).
        pooling: The pooling mode of the output.
        normalize: Whether the output ends in a Normalize module.
        max_seq_length: What the output truncates at.
        others: Module types other than Transformer/Pooling/Normalize (they rule out the numerical check).
    """

    src: Path
    out: Path
    kind: str
    hf_dir: Path
    action: str
    pooling: str | None
    normalize: bool
    max_seq_length: int
    others: list[str]


def run(cfg: ConvertConfig) -> Path:
    """``offline-embft convert``: a Hugging Face encoder → a verified sentence-transformers directory.

    A raw encoder gets Transformer → Pooling → Normalize with ``cfg.pooling``, and CLS when the config leaves it
    empty: BCE, BGE and XLM-R checkpoints are trained with CLS, and sentence-transformers' silent fallback to mean
    pooling is the trap this stage exists to avoid. A sentence-transformers model is copied unchanged unless
    ``cfg.pooling`` asks for another pooling. The result is loaded back and compared with a raw transformers
    forward pass on Chinese and English texts; the max abs difference is logged and saved in convert_report.json.

    Args:
        cfg: The convert settings (source, output, pooling, max_seq_length, normalize).

    Returns:
        The output directory.

    Raises:
        UserError: the source is missing, not a model, incomplete, or the check fails.
    """
    plan = make_plan(cfg)
    check = write(plan, cfg)
    if check["passed"]:
        logger.info(
            "%s → %s (%s, %s pooling%s, max_seq_length %d): verified, max abs difference %.2e vs raw transformers "
            "on %d texts",
            plan.src,
            plan.out,
            plan.action,
            plan.pooling,
            " + normalize" if plan.normalize else "",
            plan.max_seq_length,
            check["max_abs_diff"],
            check["texts"],
        )
    return plan.out


def make_plan(cfg: ConvertConfig) -> Plan:
    """Decide what to write: convert a raw encoder, repool or copy a sentence-transformers model; with which
    pooling and max_seq_length (never beyond what the encoder's position embeddings can take).

    Raises:
        UserError: no model given, the source is missing, not a model or incomplete, or the output is the source.
    """
    from offline_embft.core.layout import st_dir

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
        if not (cfg.pooling and cfg.pooling != own_mode):
            max_seq_length = st_max_seq_length(src) or limit or cfg.max_seq_length
            if max_seq_length != cfg.max_seq_length:
                logger.info(
                    "%s is already a sentence-transformers model: kept unchanged (max_seq_length %d, config says %d)",
                    src,
                    max_seq_length,
                    cfg.max_seq_length,
                )
            return Plan(src, out, kind, hf_dir, "copied", own_mode, own_normalize, max_seq_length, others)
    if not cfg.pooling:
        logger.warning(
            "%s has no pooling config: using CLS pooling (right for BCE/BGE/XLM-R); pass --pooling mean for "
            "mean-pooled models such as MiniLM or m3e",
            src,
        )
    max_seq_length = cfg.max_seq_length
    if limit and max_seq_length > limit:
        logger.warning("max_seq_length %d exceeds what %s can take; using %d", max_seq_length, src, limit)
        max_seq_length = limit
    action = "repooled" if kind == "st" else "converted"
    return Plan(src, out, kind, hf_dir, action, cfg.pooling or "cls", cfg.normalize, max_seq_length, [])


def write(plan: Plan, cfg: ConvertConfig) -> dict[str, Any]:
    """Write the planned model, check it numerically, and keep it only if the check passes (atomically).

    Returns:
        The check: ``{"passed": True/False/None, ...}`` (None: no raw reference for this pooling).

    Raises:
        UserError: the check fails (nothing is written).
    """
    from offline_embft.core.config import save_config

    with atomic_dir(plan.out) as tmp:
        if plan.action == "copied":
            shutil.copytree(plan.src, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(CONVERT_REPORT, ".git"))
            dimension = read_json(plan.hf_dir / "config.json").get("hidden_size")
        else:
            dimension = _build(plan.hf_dir, plan.pooling, plan.normalize, plan.max_seq_length, tmp)
        if plan.pooling in ("cls", "mean") and not plan.others:
            check = verify(tmp, plan.hf_dir, plan.pooling, plan.normalize, plan.max_seq_length)
        else:
            check = {
                "passed": None,
                "reason": f"pooling {plan.pooling!r} with modules {plan.others}: no raw reference",
            }
            logger.warning("%s: not verified (%s)", plan.src, check["reason"])
        if check["passed"] is False:
            raise UserError(
                f"conversion check failed: max abs difference {check['max_abs_diff']:.2e} ≥ {TOLERANCE:g} between "
                f"the sentence-transformers model and raw transformers ({plan.pooling} pooling); output not written"
            )
        write_json(tmp / CONVERT_REPORT, _report(plan, dimension, check))
        save_config(cfg, tmp / CONVERT_CONFIG)
    return check


def _report(plan: Plan, dimension: int | None, check: dict[str, Any]) -> dict[str, Any]:
    """convert_report.json: what was done, with which settings, and the numerical check."""
    return {
        "source": str(plan.src),
        "output": str(plan.out),
        "action": plan.action,
        "source_format": "sentence-transformers" if plan.kind == "st" else "transformers",
        "pooling": plan.pooling,
        "normalize": plan.normalize,
        "max_seq_length": plan.max_seq_length,
        "embedding_dimension": dimension,
        "verification": check,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
