"""What a user's first run on a GPU server meets, with fakes that fail the way vLLM 0.33, torch and nvidia-smi do.

vLLM is the faithful fake of tests/fake_vllm.py; nvidia-smi is a script on PATH printing what the real one prints for
``--query-gpu=index,name,driver_version,compute_cap --format=csv,noheader``; torch.cuda is patched at the few
functions a CUDA machine answers differently (is_available, device properties, arch list), so torch's own
``is_bf16_supported`` logic runs unchanged.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import fake_vllm
import pytest
import tomllib
from packaging.specifiers import SpecifierSet
from tiny_qwen import build_tiny_qwen
from typer.testing import CliRunner

from offline_embft import doctor, pipeline
from offline_embft.core import gpu_compat
from offline_embft.core.config import GenerateConfig, PipelineConfig, load_config
from offline_embft.core.errors import UserError
from offline_embft.generate.llm import create_llm
from offline_embft.generate.prompt import load_template
from offline_embft.generate.run import stats_path
from offline_embft.train.embedder import resolve_precision

REPO = Path(__file__).resolve().parents[1]
LAW = "公司是企业法人，有独立的法人财产，享有法人财产权。公司以其全部财产对公司的债务承担责任。"
RARE = "鬯黻黼彧龘靐齉爩麤龖"  # rare characters: the tiny Qwen gives each its own token, as a real BPE gives 2-3


def _chunk_texts(count: int = 64, long_index: int = 17, long_chars: int = 1500) -> list[str]:
    texts = [f"第{i}条 {LAW}" for i in range(count)]
    texts[long_index] = f"第{long_index}条 " + (LAW + RARE) * (long_chars // (len(LAW) + len(RARE)) + 1)
    return texts


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> Path:
    return build_tiny_qwen(tmp_path_factory.mktemp("m") / "Qwen3-0.6B", [*_chunk_texts(), load_template()])


@pytest.fixture
def vllm(monkeypatch):
    return fake_vllm.install(monkeypatch)


def _write_chunks(path: Path, texts: list[str]) -> Path:
    rows = [{"id": f"c{i:02d}", "text": text, "source": "law.pdf", "pages": [1]} for i, text in enumerate(texts)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _generate_cli(chunks: Path, out: Path, model: Path, *sets: str) -> int:
    from offline_embft.cli import app

    args = ["generate", str(chunks), "--out", str(out), "--backend", "vllm", "--model", str(model)]
    args += ["--batch-size", "64"]
    defaults = ("generate.max_model_len=600", "generate.max_new_tokens=64", "generate.max_retries=1")
    for item in (*defaults, "generate.questions_per_chunk=1", *sets):
        args += ["--set", item]
    return CliRunner().invoke(app, args).exit_code


# ---------------------------------------------------------------------------------------------------------------
# Defect 4: one over-long prompt must not kill generation (vLLM's side runs on the real engine since the CPU build:
# tests/test_vllm_real.py)


def test_transformers_backend_keeps_over_long_prompts_from_the_model(tiny_qwen, monkeypatch):
    llm = create_llm(
        GenerateConfig(backend="transformers", model=str(tiny_qwen), device="cpu", max_model_len=300, max_new_tokens=8)
    )
    assert llm.prompt_budget.limit == 292
    calls = []
    real = llm._model.generate
    monkeypatch.setattr(llm._model, "generate", lambda **kw: calls.append(kw["input_ids"].shape) or real(**kw))
    answers = llm.complete_batch(["短问题？", "公" * 400], raw=True)
    assert answers[0] is not None and answers[1] is None
    assert llm.last_refusals[1].startswith("prompt_too_long: ") and calls[0][0] == 1  # only the short one ran


# ---------------------------------------------------------------------------------------------------------------
# Defects 5 and 9: engine start-up failures are one line; quantization comes from the checkpoint


def _quantized_copy(tiny_qwen: Path, target: Path, method: str) -> Path:
    import shutil

    shutil.copytree(tiny_qwen, target)
    config = json.loads((target / "config.json").read_text(encoding="utf-8"))
    config["quantization_config"] = {"quant_method": method, "bits": 4, "group_size": 128, "zero_point": True}
    (target / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return target


def test_preset_quantization_is_left_to_the_checkpoint(tiny_qwen, vllm, tmp_path):
    model = _quantized_copy(tiny_qwen, tmp_path / "Qwen3-8B-AWQ", "awq")
    create_llm(GenerateConfig(backend="vllm", model=str(model)))
    engine = vllm.LLM.instances[-1]
    assert engine.kwargs["quantization"] is None  # the preset says awq; vLLM picks the kernel itself
    assert engine.model_config.quantization == "awq_marlin"


@pytest.mark.parametrize(
    ("setup", "overrides", "words"),
    [
        ("quant", {"quantization": "fp8"}, "leave generate.quantization empty"),
        ("kv", {}, "raise generate.gpu_memory_utilization"),
        ("kv-len", {"max_model_len": 4096}, "lower generate.max_model_len"),
        ("oom", {}, "raise generate.tensor_parallel_size"),
    ],
)
def test_engine_start_failures_are_one_line_naming_the_setting(tiny_qwen, vllm, tmp_path, setup, overrides, words):
    model = _quantized_copy(tiny_qwen, tmp_path / "Qwen3-8B-AWQ", "awq") if setup == "quant" else tiny_qwen
    weights = sum(p.stat().st_size for p in Path(tiny_qwen).glob("*.safetensors"))
    if setup == "kv":  # the weights take all the memory vLLM may use
        vllm.LLM.gpu_bytes = int(weights * 1.05)
    elif setup == "kv-len":  # room for the weights, not for a 4096-token KV cache
        vllm.LLM.gpu_bytes = int(weights * 1.2)
    elif setup == "oom":
        vllm.LLM.gpu_bytes = weights // 2
    with pytest.raises(UserError, match="vLLM could not start") as info:
        create_llm(GenerateConfig(backend="vllm", model=str(model), **overrides))
    assert words in str(info.value) and "\n" not in str(info.value)


def test_an_unknown_start_failure_keeps_vllms_own_error(tiny_qwen, vllm, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("Engine core initialization failed. See root cause above. Failed core proc(s): {}")

    monkeypatch.setattr(vllm.module, "LLM", broken)
    with pytest.raises(RuntimeError, match="Engine core initialization failed"):
        create_llm(GenerateConfig(backend="vllm", model=str(tiny_qwen)))


# ---------------------------------------------------------------------------------------------------------------
# Defect 6: sampling settings fail at config load, with vLLM's own ranges


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("temperature", 2.5),
        ("temperature", -0.1),
        ("top_p", 0.0),
        ("top_p", 1.2),
        ("top_k", -2),
        ("min_p", 1.5),
        ("presence_penalty", 2.5),
        ("presence_penalty", -3.0),
    ],
)
def test_sampling_settings_vllm_rejects_fail_at_config_load(key, value):
    from offline_embft.generate.llm import Sampling

    with pytest.raises(UserError, match=f"generate.{key}"):
        load_config(None, [f"generate.{key}={value}"])
    # ... and they are exactly what vLLM's SamplingParams refuses.
    fields = {**Sampling().as_dict(), key: value}
    # The real ones: vLLM's CPU build is installed wherever the suite runs.
    exceptions, sampling_params = pytest.importorskip("vllm.exceptions"), pytest.importorskip("vllm.sampling_params")
    with pytest.raises(exceptions.VLLMValidationError):
        sampling_params.SamplingParams(
            max_tokens=fields["max_tokens"],
            temperature=fields["temperature"],
            top_p=fields["top_p"],
            top_k=fields["top_k"],
            min_p=fields["min_p"],
            presence_penalty=fields["presence_penalty"],
        )


def test_boundary_sampling_settings_pass_both_checks():
    cfg = load_config(None, ["generate.temperature=2", "generate.top_p=1", "generate.top_k=-1", "generate.min_p=1"])
    assert cfg.generate.temperature == 2.0
    sampling_params = pytest.importorskip("vllm.sampling_params")
    sampling_params.SamplingParams(temperature=2.0, top_p=1.0, top_k=-1, min_p=1.0, presence_penalty=-2.0)
    with pytest.raises(UserError, match="max_model_len"):
        load_config(None, ["generate.max_model_len=200", "generate.max_new_tokens=256"])


# ---------------------------------------------------------------------------------------------------------------
# Defect 3: bf16 only where the GPU computes it; defects 2 and 7: doctor's GPU lines


class _Props:
    def __init__(self, name: str, capability: tuple[int, int], memory_gib: int) -> None:
        self.name = name
        self.major, self.minor = capability
        self.total_memory = memory_gib * 1024**3


def mock_cuda(monkeypatch, name: str, capability: tuple[int, int], *, cuda: str = "12.8", archs=None, count=1):
    """torch.cuda as a CUDA machine answers; torch's own is_bf16_supported logic runs on top of it."""
    import torch

    props = _Props(name, capability, 16)
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    # A T4 or V100 can emulate bf16: creating a bf16 tensor works there (torch/cuda/__init__.py:214-221).
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(archs or ["sm_75", "sm_80", "sm_86", "sm_90"]))


def test_precision_auto_is_fp16_on_a_t4_and_bf16_on_an_a100(monkeypatch):
    import torch

    mock_cuda(monkeypatch, "Tesla T4", (7, 5))
    assert torch.cuda.is_bf16_supported() is True  # the trap: emulated bf16 counts as supported
    assert resolve_precision("auto") == "fp16"
    mock_cuda(monkeypatch, "NVIDIA A100-SXM4-80GB", (8, 0))
    assert resolve_precision("auto") == "bf16"


def fake_nvidia_smi(monkeypatch, tmp_path: Path, *rows: str) -> None:
    """An ``nvidia-smi`` on PATH printing ``rows`` for doctor's query (and failing on anything else)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "nvidia-smi"
    body = "\n".join(rows)
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" != "--query-gpu=index,name,driver_version,compute_cap" ]; then echo "bad query" >&2; exit 2; fi\n'
        f"cat <<'EOF'\n{body}\nEOF\n",
        encoding="utf-8",
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")


def _gpu_checks(backend: str = "vllm") -> dict[str, doctor.Check]:
    cfg = PipelineConfig()
    cfg.generate.backend = backend
    gpus, error = gpu_compat.read_nvidia_smi()
    checks = [
        doctor.check_gpu(cfg),
        doctor.check_driver(cfg, gpus, error),
        doctor.check_compute_capability(cfg, gpus),
    ]
    return {c.name: c for c in checks}


def test_doctor_a_cuda13_torch_on_a_535_driver_names_the_pair_to_install(monkeypatch, tmp_path):
    fake_nvidia_smi(monkeypatch, tmp_path, "0, NVIDIA A100-SXM4-80GB, 535.104.05, 8.0")
    mock_cuda(monkeypatch, "NVIDIA A100-SXM4-80GB", (8, 0), cuda="13.0")
    line = _gpu_checks()["nvidia driver"]
    assert line.verdict == doctor.FAIL
    assert "driver 535.104.05 runs CUDA 12.x" in line.detail and "built for CUDA 13.0" in line.detail
    assert "torch 2.10.0" in line.detail and "vLLM 0.19.1" in line.detail and "--driver 535.104.05" in line.detail


def test_doctor_a_t4_on_a_580_driver_is_fine_and_trains_fp16(monkeypatch, tmp_path):
    fake_nvidia_smi(monkeypatch, tmp_path, "0, Tesla T4, 580.65.06, 7.5", "1, Tesla T4, 580.65.06, 7.5")
    mock_cuda(monkeypatch, "Tesla T4", (7, 5), cuda="13.0", count=2)
    checks = _gpu_checks()
    assert checks["nvidia driver"].verdict == doctor.OK and "runs CUDA 13.x" in checks["nvidia driver"].detail
    assert checks["compute capability"].verdict == doctor.OK
    assert "1: Tesla T4 7.5" in checks["compute capability"].detail
    assert "no native bf16: training runs fp16" in checks["compute capability"].detail
    assert "bf16 no (fp16 training)" in checks["gpu / cuda"].detail


def test_doctor_a_v100_without_kernels_in_torch_points_to_the_cu126_build(monkeypatch, tmp_path):
    fake_nvidia_smi(monkeypatch, tmp_path, "0, Tesla V100-SXM2-32GB, 550.54.15, 7.0")
    mock_cuda(monkeypatch, "Tesla V100-SXM2-32GB", (7, 0), cuda="12.8")
    line = _gpu_checks("transformers")["compute capability"]
    assert line.verdict == doctor.FAIL and "no kernels below 7.5" in line.detail
    assert "torch 2.9.1" in line.detail and "whl/cu126" in line.detail and "--capability 7.0" in line.detail


def test_doctor_vllm_on_a_v100_says_what_to_use_instead(monkeypatch, tmp_path):
    from offline_embft.generate.llm.vllm_backend import VllmLLM

    monkeypatch.setattr(VllmLLM, "needs_gpu", True)  # a GPU server's vLLM, not the CPU build installed here
    fake_nvidia_smi(monkeypatch, tmp_path, "0, Tesla V100-SXM2-32GB, 550.54.15, 7.0")
    mock_cuda(monkeypatch, "Tesla V100-SXM2-32GB", (7, 0), cuda="12.6", archs=["sm_50", "sm_60", "sm_70", "sm_80"])
    line = _gpu_checks("vllm")["compute capability"]
    assert line.verdict == doctor.FAIL and "vLLM needs compute capability >= 7.5" in line.detail
    assert "--backend transformers" in line.detail
    assert _gpu_checks("transformers")["compute capability"].verdict == doctor.OK


def test_doctor_without_nvidia_smi_on_a_cpu_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    assert gpu_compat.read_nvidia_smi() == ([], "nvidia-smi not found")
    cfg = PipelineConfig()
    cfg.generate.backend = "ict"
    assert doctor.check_driver(cfg, [], "nvidia-smi not found").verdict == doctor.OK
    cfg.generate.backend = "vllm"
    from offline_embft.generate.llm.vllm_backend import VllmLLM

    with monkeypatch.context() as gpu_build:  # a GPU server's vLLM needs the driver; the CPU build does not
        gpu_build.setattr(VllmLLM, "needs_gpu", True)
        assert doctor.check_driver(cfg, [], "nvidia-smi not found").verdict == doctor.FAIL
        gpu_build.setattr(VllmLLM, "needs_gpu", False)
        assert doctor.check_driver(cfg, [], "nvidia-smi not found").verdict == doctor.OK


def test_doctor_compiler_line(monkeypatch, tmp_path):
    import sysconfig

    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(doctor.gpu.shutil, "which", lambda name: None)
    real = sysconfig.get_paths
    monkeypatch.setattr(doctor.gpu.sysconfig, "get_paths", lambda: {**real(), "include": str(tmp_path)})
    cfg = PipelineConfig()
    line = doctor.check_compiler(cfg)
    assert line.verdict == doctor.FAIL and "Triton" in line.detail
    assert "apt-get install gcc" in line.detail
    assert f"python{sys.version_info.major}.{sys.version_info.minor}-dev" in line.detail
    cfg.generate.backend = "transformers"
    assert doctor.check_compiler(cfg).verdict == doctor.OK
    (tmp_path / "Python.h").write_text("")
    monkeypatch.setenv("CC", "/usr/bin/gcc")
    cfg.generate.backend = "vllm"
    ok = doctor.check_compiler(cfg)
    assert ok.verdict == doctor.OK and "Python.h found" in ok.detail


# ---------------------------------------------------------------------------------------------------------------
# Defect 1: dependency floors; defect 2: the bundle's target


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _spec(requirements: list[str], name: str) -> SpecifierSet:
    from packaging.requirements import Requirement

    (req,) = [Requirement(r) for r in requirements if Requirement(r).name == name]
    return req.specifier


def test_pyproject_floors_reject_what_the_code_cannot_run_with():
    import sentence_transformers
    import transformers

    deps = _pyproject()["project"]["dependencies"]
    assert "4.51.3" not in _spec(deps, "transformers") and "5.0.0" in _spec(deps, "transformers")
    assert "5.3.0" not in _spec(deps, "sentence-transformers") and "5.4.0" in _spec(deps, "sentence-transformers")
    assert transformers.__version__ in _spec(deps, "transformers")
    assert sentence_transformers.__version__ in _spec(deps, "sentence-transformers")
    vllm_extra = _spec(_pyproject()["project"]["optional-dependencies"]["vllm"], "vllm")
    for pair in gpu_compat.ENGINE_PAIRS:
        assert pair.vllm in vllm_extra
    assert "0.8.5" not in vllm_extra and "0.34.0" not in vllm_extra


def _bundle():
    spec = importlib.util.spec_from_file_location("bundle_under_test", REPO / "scripts" / "bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("target", "torch", "vllm", "index"),
    [
        (["--driver", "535"], "2.10.0", "0.19.1", ""),
        (["--cuda", "12.4"], "2.10.0", "0.19.1", ""),
        (["--driver", "580.65.06"], "2.14.0", "0.33.0", ""),
        (["--driver", "575.51.03", "--capability", "7.0"], "2.9.1+cu126", "", "whl/cu126"),
        (["--driver", "470.82.01"], "2.7.1+cu118", "", "whl/cu118"),
        (["--driver", "535", "--glibc", "2.28"], "2.9.1+cu126", "", "whl/cu126"),  # vLLM 0.19.1 is manylinux_2_31
    ],
)
def test_bundle_resolve_only_prints_and_pins_the_pair_for_the_target(
    monkeypatch, tmp_path, capsys, target, torch, vllm, index
):
    bundle = _bundle()
    commands: list[list[str]] = []
    monkeypatch.setattr(bundle, "run", commands.append)  # pip is the network part: record what it would run
    monkeypatch.setattr(bundle, "build_local_wheels", lambda wheels, python, packages: tmp_path / "p.whl")
    monkeypatch.setattr(bundle, "resolve_only", lambda args, wheels, reqs: commands.append((args, reqs)))
    args = ["--out", str(tmp_path / "b"), "--resolve-only", "--extras", "vllm", "--python-version", "3.12", *target]
    assert bundle.main(args) == 0
    printed = capsys.readouterr().out
    assert f"torch=={torch}" in printed
    assert (f"vllm=={vllm}" in printed) if vllm else ("vllm: none" in printed and "--backend transformers" in printed)
    ((parsed, reqs),) = commands
    assert f"torch=={torch}" in reqs and (f"vllm=={vllm}" in reqs if vllm else not any("vllm" in r for r in reqs))
    pip_args = bundle.pip_target_args(parsed)  # what main() hands to pip for the target
    if index:
        assert index in printed and any(index in part for part in pip_args)
    if vllm == "0.19.1":  # its wheel is manylinux_2_31: the target tags must reach it
        assert "manylinux_2_31_x86_64" in pip_args and "glibc >= 2.31" in printed
    if "--glibc" in target:
        assert "needs glibc >= 2.31, the target has 2.28" in printed


def test_python_decides_too():
    assert gpu_compat.plan_for(driver="580.65.06", python="3.10").vllm == "0.19.1"  # 0.33 needs Python 3.11+
    with pytest.raises(ValueError, match="driver"):
        gpu_compat.plan_for()


def test_docs_table_is_the_compat_table():
    text = (REPO / "docs" / "models.md").read_text(encoding="utf-8")
    for row in gpu_compat.table_rows():
        line = f"| {row['driver']} | {row['cuda']} | {row['gpus']} | {row['torch']} | {row['vllm']} | {row['glibc']} |"
        assert line in text


def test_readme_recommends_vllm_only_for_gpus_it_runs_on():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("### Which Qwen3 size fits which GPU", 1)[1].split("\n\n", 2)[1]
    for row in table.splitlines():
        if "V100" in row or "P100" in row or "P40" in row:
            pytest.fail(
                f"the vLLM GPU table recommends a GPU vLLM {gpu_compat.ENGINE_PAIRS[0].vllm} cannot run: {row}"
            )
    assert "V100" in readme.split("### Which Qwen3 size fits which GPU", 1)[1]  # ... but says what V100 users do


# ---------------------------------------------------------------------------------------------------------------
# Defect 8: make all on a multi-GPU server trains on one GPU


def test_train_child_is_pinned_to_one_gpu_and_says_so(monkeypatch, tmp_path, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake_nvidia_smi(monkeypatch, tmp_path, *(f"{i}, NVIDIA A100-SXM4-80GB, 580.65.06, 8.0" for i in range(4)))
    overrides = [f"dataset_dir={tmp_path / 'D'}", f"models_dir={tmp_path / 'M'}"]
    # train.nproc auto: one process per GPU under torchrun (launched by the train command), so nothing is pinned.
    assert pipeline.train_env(load_config(REPO / "configs" / "cpu.yaml", overrides).resolve()) == {}
    two = load_config(REPO / "configs" / "cpu.yaml", [*overrides, "train.nproc=2"]).resolve()
    assert pipeline.train_env(two) == {"CUDA_VISIBLE_DEVICES": "0,1"}
    cfg = load_config(REPO / "configs" / "cpu.yaml", [*overrides, "train.nproc=1"]).resolve()
    stamps = pipeline.write_stamps(cfg, tmp_path / "s")
    outputs = {stage.name: stage.outputs for stage in pipeline.stages(cfg, stamps, [])}
    seen: dict[str, str | None] = {}

    def runner(args: list[str]) -> int:
        import os

        seen[args[0]] = os.environ.get("CUDA_VISIBLE_DEVICES")
        for path in outputs.get(args[0], []):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}", encoding="utf-8")
        return 0

    with caplog.at_level(logging.WARNING, logger="offline_embft.pipeline"):
        pipeline.run(cfg, runner=runner, force=True)
    assert seen["train"] == "0"
    assert all(value is None for stage, value in seen.items() if stage != "train")
    assert "train runs on one GPU (CUDA_VISIBLE_DEVICES=0) of the 4 visible" in caplog.text
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert pipeline.train_env(cfg) == {"CUDA_VISIBLE_DEVICES": "2"}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert pipeline.train_env(cfg) == {}


# ---------------------------------------------------------------------------------------------------------------
# scripts/gpu_smoke.py: its vLLM steps against the fake (on a GPU server they run against the real engine)


def test_gpu_smoke_vllm_steps_pass_against_the_faithful_fake(tiny_qwen, vllm, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_smoke_under_test", REPO / "scripts" / "gpu_smoke.py")
    smoke = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, smoke)
    spec.loader.exec_module(smoke)
    monkeypatch.setattr(smoke, "cuda_device", lambda: (True, "cuda: fake"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real_find_spec(name, *a)
    )
    model = build_tiny_qwen(tiny_qwen.parent / "smoke" / "Qwen3-0.6B", [*smoke.statute_chunks()])

    first = smoke.timed(smoke.Row("generate vllm"), lambda row: setattr(row, "llm", smoke.step_vllm(row, model)))
    assert first.result == "pass", first.detail
    assert "64/64 answered in 1 engine call(s)" in first.detail and "shortened by" in first.detail
    second = smoke.timed(smoke.Row("vllm refuses alone"), lambda row: smoke.step_vllm_refuses_alone(row, first.llm))
    assert second.result == "pass", second.detail
    assert "7/8 answered" in second.detail and "longer than the maximum model length of 1024" in second.detail
    assert "| generate vllm | cuda: fake |" in smoke.table([first, second])


# ---------------------------------------------------------------------------------------------------------------
# Defect 4 for the openai backend: a vLLM-like server that lists max_model_len and answers 400 past it


class _VllmLikeServer:
    """``vllm serve`` as the openai backend sees it: /v1/models with ``max_model_len`` (ModelCard, vllm 0.33
    entrypoints/serve/engine/protocol.py:105-113), and a 400 ErrorResponse with vLLM's message (renderers/params.py:
    543-551) when the chat-rendered prompt has more tokens than that."""

    def __init__(self, model_dir: Path, name: str, max_model_len: int) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.too_long = 0
        self.answered = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                card = {"id": name, "object": "model", "owned_by": "vllm", "max_model_len": max_model_len}
                self._send(200, {"object": "list", "data": [card]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                rendered = tokenizer.apply_chat_template(
                    body["messages"],
                    tokenize=False,
                    add_generation_prompt=True,
                    **body.get("chat_template_kwargs", {}),
                )
                count = len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
                if count > max_model_len:
                    server.too_long += 1
                    message = (
                        f"This model's maximum context length is {max_model_len} tokens. However, your prompt "
                        f"contains {count} input tokens, which exceeds this limit even without any output tokens. "
                        f"Please reduce the length of the input prompt. (parameter=input_tokens, value={count})"
                    )
                    error = {"message": message, "type": "BadRequestError", "param": "input_tokens", "code": 400}
                    self._send(400, {"error": error})
                    return
                server.answered += 1
                question = fake_vllm.qwen3_answer(rendered, body["messages"][-1]["content"])
                choice = {"index": 0, "message": {"role": "assistant", "content": question}, "finish_reason": "stop"}
                usage = {"prompt_tokens": count, "completion_tokens": 9, "total_tokens": count + 9}
                self._send(
                    200,
                    {
                        "id": "c",
                        "object": "chat.completion",
                        "created": 0,
                        "model": name,
                        "choices": [choice],
                        "usage": usage,
                    },
                )

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("tokenizer_here", [True, False])
def test_openai_backend_shortens_with_a_local_tokenizer_else_counts_the_servers_refusal(
    tiny_qwen, tmp_path, tokenizer_here
):
    from offline_embft.cli import app

    server = _VllmLikeServer(tiny_qwen, "Qwen3-0.6B", 600)
    models = tmp_path / "Models"
    if tokenizer_here:
        import shutil

        shutil.copytree(tiny_qwen, models / "Qwen" / "Qwen3-0.6B")
    chunks = _write_chunks(tmp_path / "train.jsonl", _chunk_texts())
    out = tmp_path / "train_dataset.json"
    args = ["generate", str(chunks), "--out", str(out), "--backend", "openai", "--model", "Qwen3-0.6B"]
    args += ["--base-url", server.url, "--batch-size", "64"]
    for item in (f"models_dir={models}", "generate.max_new_tokens=64", "generate.request_retries=0"):
        args += ["--set", item]
    try:
        result = CliRunner().invoke(app, args)
    finally:
        server.close()
    assert result.exit_code == 0, result.output
    stats = json.loads(stats_path(out).read_text(encoding="utf-8"))
    if tokenizer_here:  # counted here against the server's max_model_len: shortened, never refused
        assert stats["chunks_with_questions"] == 64 and stats["chunks_shortened_in_prompt"] == 1
        assert server.too_long == 0
    else:  # the server refuses it: one failure with the server's reason, not retried, the stage goes on
        assert stats["chunks_with_questions"] == 63 and stats["prompts_refused"] == 1
        assert server.too_long == 1 and "maximum context length is 600" in stats["failed"][0]["refused"]
