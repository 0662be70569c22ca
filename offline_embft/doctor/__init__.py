"""``offline-embft doctor``: can this machine run this config? One screen, one verdict per line, no network.

Checks Python and key packages, GPU and CUDA, the NVIDIA driver against the CUDA the installed torch is built for,
each GPU's compute capability against torch's kernels and vLLM's floor, the C compiler and Python.h that Triton
compiles with, vLLM (only when the config generates with it), each model the config needs (present and complete),
the converted embedding model, free disk for outputs, the offline variables, and the embedding tokenizer's UNK and
truncation rates on a sample of the user's corpus. A FAIL means the run would break (exit code 1); a WARN means it
would run but probably not as the user hopes. Every GPU verdict names what to install instead
(:mod:`offline_embft.core.gpu_compat` knows which torch/vLLM pair runs on which driver and GPU).

The checks live beside this module, by what they look at: :mod:`.system` (Python, packages, disk, offline
variables), :mod:`.gpu` (CUDA, driver, compute capability, compiler, vLLM), :mod:`.models` (the models and the
tokenizer's coverage of the corpus), :mod:`.general` (retention's general sets); :mod:`.lines` holds the screen
line they all return.

``--stage`` narrows the screen to what the named stages need (:data:`CHECKS` maps each check to them);
``offline-embft all --until STAGE`` passes the stages it will run, so ingesting on a CPU workstation with the GPU
server's config is not stopped by a vLLM it will not start.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO

from offline_embft.core import gpu_compat
from offline_embft.core.config import STAGES, PipelineConfig
from offline_embft.core.layout import Layout
from offline_embft.doctor.general import check_general
from offline_embft.doctor.gpu import check_compiler, check_compute_capability, check_driver, check_gpu, check_vllm
from offline_embft.doctor.lines import FAIL, GIB, OK, RANK, WARN, Check, chosen_stages
from offline_embft.doctor.models import (
    check_converted,
    check_embedding_model,
    check_llm,
    check_reranker,
    check_tokenizer,
)
from offline_embft.doctor.system import check_disk, check_offline, check_packages, check_python

__all__ = [
    "CHECKS",
    "FAIL",
    "GIB",
    "OK",
    "WARN",
    "Check",
    "check_compiler",
    "check_compute_capability",
    "check_converted",
    "check_disk",
    "check_driver",
    "check_embedding_model",
    "check_general",
    "check_gpu",
    "check_llm",
    "check_offline",
    "check_packages",
    "check_python",
    "check_reranker",
    "check_tokenizer",
    "check_vllm",
    "diagnose",
    "needed",
    "render",
    "run",
    "scope",
    "verdict",
]


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
    "general sets": (lambda m: check_general(m.cfg), ("train", "evaluate")),  # retention (general.sets)
}


def needed(check: str, stages: Iterable[str] | None = None) -> bool:
    """Whether any of ``stages`` (every stage when none is named) needs the check ``check`` (a :data:`CHECKS` key)."""
    return not set(CHECKS[check][1]).isdisjoint(chosen_stages(stages))


def diagnose(cfg: PipelineConfig, stages: Iterable[str] | None = None) -> list[Check]:
    """The checks the given stages need (every check when none is named), in screen order.

    Raises:
        UserError: a name in ``stages`` is not a stage.
    """
    chosen = chosen_stages(stages)
    machine = _Machine(cfg, chosen)
    checks = (probe(machine) for name, (probe, _) in CHECKS.items() if needed(name, chosen))
    return [check for check in checks if check is not None]


def verdict(checks: list[Check]) -> str:
    """The worst verdict of all lines."""
    return max((c.verdict for c in checks), key=RANK.get, default=OK)


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

    chosen = chosen_stages(stages)
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
