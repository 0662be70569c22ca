"""Which torch/vLLM pair runs on which GPU server: the one place that knows driver → CUDA → wheels.

vLLM pins torch exactly, and the torch wheel on PyPI is built for one CUDA major version, which sets the NVIDIA
driver the server needs and the GPUs (compute capabilities) the kernels were compiled for. ``doctor`` reads the
server (``nvidia-smi``, ``torch.cuda``) and asks this module whether the installed torch/vLLM can run there;
``scripts/bundle.py --driver/--cuda/--capability`` asks it which pair to carry; docs/models.md prints its table.

Facts and where they come from (checked in the released wheels' metadata, not from memory):

- vLLM 0.33.0 METADATA: ``torch==2.14.0``, ``transformers>=5.16.1,<5.21``, Python >= 3.11.
  vLLM 0.32.0 → torch 2.13.0; 0.27.1-0.31.0 → torch 2.13.0; 0.20.2-0.25.1 → torch 2.11.0;
  0.17.1-0.19.1 → torch 2.10.0 (0.19.1: ``transformers!=5.0-5.5.0,>=4.56``, Python < 3.14); 0.16.0/0.15.1 → 2.9.1.
- torch on PyPI: 2.11.0-2.14.0 require ``cuda-toolkit[...]==13.0.x`` (CUDA 13); 2.8.0-2.10.0 require
  ``nvidia-cuda-runtime-cu12==12.8.90`` (CUDA 12.8); 2.7.1 → 12.6.77; 2.6.0 → 12.4.127.
- NVIDIA driver per CUDA major (CUDA compatibility guide, minor version compatibility): CUDA 13.x needs >= 580.65.06;
  CUDA 12.x runs on >= 525.60.13; CUDA 11.x on >= 450.80.02. A torch wheel carries its own CUDA runtime, so only the
  driver matters, not the toolkit installed on the server.
- GPU architectures: CUDA 13 no longer compiles for Maxwell, Pascal or Volta (sm_50-sm_70), and PyTorch's CUDA 12.8
  wheels are built for sm_75 and newer; its CUDA 12.6 builds still include sm_50-sm_70. So a V100 (7.0) runs no
  vLLM wheel of the pairs below; it runs torch from the cu126 index with the transformers backend.
- bf16: ``torch.cuda.is_bf16_supported()`` returns True on a T4 because bf16 can be *emulated* there
  (torch 2.13 torch/cuda/__init__.py:191-211: compute capability >= 8 is native, else it tries a bf16 tensor);
  ``including_emulation=False`` answers the question that matters for speed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

PYTORCH_INDEX = "https://download.pytorch.org/whl"


@dataclass(frozen=True)
class CudaLine:
    """One CUDA major version: the driver it needs and the GPUs its PyPI torch wheels are compiled for."""

    major: int
    min_driver: str
    min_capability: tuple[int, int]


CUDA_LINES = {
    13: CudaLine(13, "580.65.06", (7, 5)),
    12: CudaLine(12, "525.60.13", (7, 5)),  # PyPI's 12.8 builds; the cu126 index builds go down to sm_50
    11: CudaLine(11, "450.80.02", (3, 7)),
}


@dataclass(frozen=True)
class EnginePair:
    """A vLLM release, the torch it pins, and the CUDA that torch's PyPI wheel is built for."""

    vllm: str
    torch: str
    cuda: str
    python: str  # the Python versions the vLLM wheel accepts
    glibc: str  # the oldest glibc its wheels (vLLM's and its dependencies') run on: their manylinux tags

    @property
    def line(self) -> CudaLine:
        return CUDA_LINES[int(self.cuda.split(".")[0])]


# Newest first. The newest vLLM of each CUDA line; these are what bundle.py carries and what the docs recommend.
ENGINE_PAIRS = (
    # glibc: vllm-0.19.1-cp38-abi3-manylinux_2_31_x86_64.whl; vllm-0.33.0 itself is manylinux_2_28, but its
    # llguidance>=1.7,<1.8 is only built for manylinux_2_31 (`bundle.py --resolve-only --glibc 2.30` finds none).
    EnginePair("0.33.0", "2.14.0", "13.0", ">=3.11,<3.15", "2.31"),
    EnginePair("0.19.1", "2.10.0", "12.8", ">=3.10,<3.14", "2.31"),
)


@dataclass(frozen=True)
class TorchOnly:
    """A torch build without vLLM, for servers no vLLM pair runs on (old drivers, Volta and older GPUs)."""

    torch: str
    cuda: str
    index_url: str
    min_driver: str
    min_capability: tuple[int, int]


TORCH_ONLY = (
    # The cu126 builds still carry sm_50-sm_70 kernels (V100, P100, P40), on any CUDA 12 driver.
    TorchOnly("2.9.1", "12.6", f"{PYTORCH_INDEX}/cu126", CUDA_LINES[12].min_driver, (5, 0)),
    TorchOnly("2.7.1", "11.8", f"{PYTORCH_INDEX}/cu118", CUDA_LINES[11].min_driver, (3, 7)),
)


def parse_version(text: str) -> tuple[int, ...]:
    """``"535.104.05"`` → ``(535, 104, 5)``; ``"12.4"`` → ``(12, 4)``; non-numeric parts end the version."""
    parts = []
    for part in text.strip().split("."):
        match = re.match(r"\d+", part)
        if not match:
            break
        parts.append(int(match.group()))
    return tuple(parts)


def driver_cuda_major(driver: str) -> int:
    """The newest CUDA major version an NVIDIA driver runs (0 when it is older than every line we know)."""
    version = parse_version(driver)
    for major in sorted(CUDA_LINES, reverse=True):
        if version >= parse_version(CUDA_LINES[major].min_driver):
            return major
    return 0


def driver_for_cuda(cuda: str) -> str:
    """The smallest driver that runs a given CUDA version (what ``nvidia-smi`` prints as "CUDA Version")."""
    major = parse_version(cuda)[0]
    if major not in CUDA_LINES:
        raise ValueError(f"unknown CUDA major version {cuda!r}; known: {', '.join(map(str, sorted(CUDA_LINES)))}")
    return CUDA_LINES[major].min_driver


def capability_text(capability: tuple[int, int]) -> str:
    return f"{capability[0]}.{capability[1]}"


@dataclass(frozen=True)
class Plan:
    """What to install on a target server: a torch build, maybe a vLLM, and why."""

    torch: str
    torch_cuda: str
    torch_index_url: str  # "" = PyPI
    vllm: str  # "" = no vLLM runs there
    reason: str
    glibc: str = ""  # the oldest glibc the pair's wheels need ("" = any manylinux2014 target)

    def requirements(self) -> list[str]:
        """Pins for pip (the torch index goes in ``--extra-index-url``).

        A build from a CUDA index is pinned with its local version (``2.9.1+cu126``): PyPI's ``2.9.1`` is another
        build (CUDA 12.8) of the same version.
        """
        local = f"+{self.torch_index_url.rstrip('/').rsplit('/', 1)[-1]}" if self.torch_index_url else ""
        reqs = [f"torch=={self.torch}{local}"]
        if self.vllm:
            reqs.append(f"vllm=={self.vllm}")
        return reqs

    def describe(self) -> str:
        where = f" from {self.torch_index_url}" if self.torch_index_url else " (PyPI)"
        engine = f"vLLM {self.vllm}" if self.vllm else "no vLLM (use --backend transformers, or openai)"
        return f"torch {self.torch} (CUDA {self.torch_cuda}){where} + {engine}: {self.reason}"


def plan_for(
    *,
    driver: str = "",
    cuda: str = "",
    capability: tuple[int, int] | None = None,
    python: str = "",
    glibc: str = "",
) -> Plan:
    """The newest torch/vLLM pair that runs on a server with this driver (or this "CUDA Version") and GPU.

    Args:
        driver: NVIDIA driver version (``nvidia-smi``), e.g. ``535.104.05``, or a branch such as ``535``.
        cuda: The "CUDA Version" ``nvidia-smi`` prints (the newest CUDA the driver runs), used when no driver is given.
        capability: The smallest compute capability among the server's GPUs, e.g. ``(7, 0)`` for a V100.
        python: The server's Python (``3.10``); a vLLM wheel that does not accept it is skipped.
        glibc: The server's glibc (``ldd --version``); a vLLM wheel built for a newer one is skipped. Empty: any
            (the plan's ``glibc`` then says what the pair needs).

    Raises:
        ValueError: neither driver nor cuda given, or a CUDA version we know nothing about.
    """
    major, source = _target_cuda(driver, cuda)
    py = parse_version(python) if python else None
    skipped_glibc = []
    for pair in ENGINE_PAIRS:
        line = pair.line
        if line.major > major:
            continue
        if capability is not None and capability < line.min_capability:
            continue
        if py is not None and not _python_ok(py, pair.python):
            continue
        if glibc and parse_version(glibc) < parse_version(pair.glibc):
            skipped_glibc.append(pair)
            continue
        return Plan(
            torch=pair.torch,
            torch_cuda=pair.cuda,
            torch_index_url="",
            vllm=pair.vllm,
            reason=(
                f"{source} runs CUDA {major}.x; vLLM {pair.vllm} pins torch {pair.torch}, whose wheel is built for "
                f"CUDA {pair.cuda} (driver >= {line.min_driver}, compute capability >= "
                f"{capability_text(line.min_capability)}, glibc >= {pair.glibc})"
            ),
            glibc=pair.glibc,
        )
    for build in TORCH_ONLY:
        if parse_version(build.cuda)[0] > major:
            continue
        if capability is not None and capability < build.min_capability:
            continue
        return Plan(
            torch=build.torch,
            torch_cuda=build.cuda,
            torch_index_url=build.index_url,
            vllm="",
            reason=_why_no_vllm(source, major, capability, python, glibc, skipped_glibc),
        )
    raise ValueError(f"{source} is older than any CUDA build of torch (driver >= {CUDA_LINES[11].min_driver} needed)")


def _target_cuda(driver: str, cuda: str) -> tuple[int, str]:
    """The newest CUDA major the target runs, from its driver (or the "CUDA Version" it prints), and how reasons name
    the target.

    Raises:
        ValueError: neither given, or a CUDA version we know nothing about.
    """
    if driver:
        version = parse_version(driver)
        # "535" means the 535 branch: compare as its newest release so "580" passes the 580.65.06 floor.
        return driver_cuda_major(driver if len(version) > 1 else f"{version[0]}.999.999"), f"driver {driver}"
    if cuda:
        driver_for_cuda(cuda)  # validates
        return parse_version(cuda)[0], f"CUDA {cuda}"
    raise ValueError("give the target's NVIDIA driver (e.g. 535.104.05) or the CUDA version nvidia-smi prints")


def _why_no_vllm(
    source: str,
    major: int,
    capability: tuple[int, int] | None,
    python: str,
    glibc: str,
    skipped_glibc: list[EnginePair],
) -> str:
    """Why no torch/vLLM pair fits the target (a torch-only plan's reason)."""
    why = []
    if major < min(p.line.major for p in ENGINE_PAIRS):
        oldest = min(ENGINE_PAIRS, key=lambda p: p.line.major)
        why.append(f"{source} is older than vLLM {oldest.vllm} needs (driver >= {oldest.line.min_driver})")
    if capability is not None and capability < min(p.line.min_capability for p in ENGINE_PAIRS):
        why.append(f"compute capability {capability_text(capability)} is below the 7.5 every vLLM pair needs")
    if skipped_glibc:
        pair = skipped_glibc[0]
        why.append(f"vLLM {pair.vllm}'s wheel needs glibc >= {pair.glibc}, the target has {glibc}")
    if python and not why:
        why.append(f"no vLLM pair accepts Python {python}")
    return "; ".join(why) or f"{source}: no vLLM pair fits"


def _python_ok(version: tuple[int, ...], spec: str) -> bool:
    for clause in spec.split(","):
        op, bound = re.match(r"([<>=!]+)(.+)", clause.strip()).groups()
        limit = parse_version(bound)
        current = version[: len(limit)]
        if (op == ">=" and current < limit) or (op == "<" and current >= limit):
            return False
    return True


def table_rows() -> list[dict[str, str]]:
    """Driver → CUDA → newest torch/vLLM pair, for docs/models.md and ``bundle.py --resolve-only``."""
    rows = []
    for pair in ENGINE_PAIRS:
        rows.append(
            {
                "driver": f">= {pair.line.min_driver}",
                "cuda": f"{pair.line.major}.x",
                "gpus": f">= {capability_text(pair.line.min_capability)}",
                "torch": f"{pair.torch} (PyPI, CUDA {pair.cuda})",
                "vllm": pair.vllm,
                "glibc": f">= {pair.glibc}",
            }
        )
    for build in TORCH_ONLY:
        rows.append(
            {
                "driver": f">= {build.min_driver}",
                "cuda": build.cuda,
                "gpus": f">= {capability_text(build.min_capability)}",
                "torch": f"{build.torch} ({build.index_url})",
                "vllm": "none: --backend transformers (or openai)",
                "glibc": "",
            }
        )
    return rows


def min_capability_for_torch_cuda(torch_cuda: str) -> tuple[int, int]:
    """The smallest compute capability the PyPI wheels of a CUDA line are compiled for."""
    return CUDA_LINES[parse_version(torch_cuda)[0]].min_capability


def vllm_min_capability() -> tuple[int, int]:
    """The compute capability every vLLM pair needs: its torch's PyPI wheel has no kernels below it (CUDA 12.8/13)."""
    return min(pair.line.min_capability for pair in ENGINE_PAIRS)


@dataclass(frozen=True)
class Gpu:
    """One GPU as ``nvidia-smi`` reports it."""

    index: int
    name: str
    driver: str
    capability: tuple[int, int]


NVIDIA_SMI_QUERY = ["--query-gpu=index,name,driver_version,compute_cap", "--format=csv,noheader"]


def read_nvidia_smi() -> tuple[list[Gpu], str]:
    """The GPUs ``nvidia-smi`` lists, and an error text when it is missing or fails ("" when fine).

    nvidia-smi comes with the driver, so it answers even when torch cannot use the GPU (a CUDA 13 torch on a 535
    driver): exactly the case doctor has to explain.
    """
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], "nvidia-smi not found"
    try:
        done = subprocess.run([exe, *NVIDIA_SMI_QUERY], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"nvidia-smi failed: {exc}"
    if done.returncode != 0:
        lines = (done.stdout + done.stderr).strip().splitlines()
        return [], f"nvidia-smi failed: {lines[0] if lines else f'exit {done.returncode}'}"
    gpus = []
    for line in done.stdout.strip().splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) < 4:
            continue
        major, _, minor = parts[3].partition(".")
        capability = (int(major), int(minor or 0)) if major.isdigit() else (0, 0)
        gpus.append(Gpu(int(parts[0]) if parts[0].isdigit() else len(gpus), parts[1], parts[2], capability))
    return gpus, "" if gpus else "nvidia-smi lists no GPU"


def bf16_native() -> bool:
    """True when the current CUDA GPU computes bf16 in hardware (Ampere and newer), False on T4/V100 and on CPU."""
    import torch

    if not torch.cuda.is_available():
        return False
    return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def visible_gpus() -> list[str]:
    """The CUDA device ids this process may use (as ``CUDA_VISIBLE_DEVICES`` would list them); none without CUDA.

    The one place GPUs are counted: replica planning, an engine's tensor parallelism and ``train.nproc`` ask here.
    """
    import os

    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # no torch, or a broken driver: the backend reports that itself, with its own message
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [part.strip() for part in listed.split(",") if part.strip()] if listed else []
    return ids[:count] if ids else [str(index) for index in range(count)]
