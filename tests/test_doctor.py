"""Doctor's verdicts on a healthy CPU setup and on broken ones."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from offline_embft import doctor
from offline_embft.core.config import PipelineConfig
from offline_embft.core.errors import UserError

CHINESE = "公司的股东会由全体股东组成，是公司的权力机构，依照本法行使职权。"
ENGLISH = "The shareholders' meeting consists of all shareholders and is the organ of authority of the company."


def write_chunks(directory: Path, texts: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rows = [
        json.dumps({"id": str(i), "text": t, "source": "a.pdf", "pages": [1]}, ensure_ascii=False)
        for i, t in enumerate(texts)
    ]
    (directory / "train.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")


def healthy_config(tmp_path: Path, minilm_path: Path, texts: list[str]) -> PipelineConfig:
    """The CPU demo: MiniLM (already sentence-transformers) as the embedding model, the ict generator, chunks."""
    cfg = PipelineConfig(
        llm="",
        embedding_model=str(minilm_path),
        models_dir=str(tmp_path / "Models"),
        dataset_dir=str(tmp_path / "Dataset"),
        results_dir=str(tmp_path / "results"),
    )
    cfg.generate.backend = "ict"
    cfg.convert.out_dir = str(minilm_path)  # already converted: the packaged model is sentence-transformers
    cfg.ingest.max_seq_length = 256
    write_chunks(tmp_path / "Dataset" / "chunks", texts)
    return cfg.resolve()


def by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {check.name: check for check in checks}


def test_healthy_cpu_setup_runs_with_a_warning_about_chinese_coverage(tmp_path, minilm_path, no_caches, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same verdict on a GPU CI machine
    cfg = healthy_config(tmp_path, minilm_path, [CHINESE] * 5 + [ENGLISH] * 5)
    checks = by_name(doctor.diagnose(cfg))

    for name in ("python", "packages", "vllm", "embedding model", "llm", "converted model", "disk", "offline env"):
        assert checks[name].verdict == doctor.OK, checks[name]
    gpu = checks["gpu / cuda"]
    assert gpu.verdict == doctor.WARN and gpu.detail.endswith("everything runs on CPU, slowly")
    coverage = checks["tokenizer coverage"]
    assert coverage.verdict == doctor.WARN  # MiniLM maps most Chinese characters to [UNK]
    # 5 Chinese and 5 English chunks: a third of MiniLM's tokens are [UNK], nothing is cut at 256 tokens.
    assert coverage.detail.startswith("UNK 34.0%, truncated 0.0% at 256 tokens on 10 chunks;")
    assert "train will add the unknown characters" in coverage.detail
    assert doctor.verdict(list(checks.values())) == doctor.WARN

    screen = io.StringIO()
    assert doctor.run(cfg, out=screen) is True
    text = screen.getvalue()
    assert "WARN  tokenizer coverage" in text and "FAIL" not in text
    assert text.rstrip().endswith("WARN  verdict: it can run, but read the WARN lines")


def test_english_corpus_is_covered_and_long_chunks_are_counted_as_truncated(tmp_path, minilm_path, no_caches):
    cfg = healthy_config(tmp_path, minilm_path, [ENGLISH] * 9 + [ENGLISH * 30])
    coverage = by_name(doctor.diagnose(cfg))["tokenizer coverage"]
    assert coverage.detail.startswith("UNK 0.0%, truncated 10.0% at 256 tokens")
    assert coverage.verdict == doctor.WARN and "chunk_size" in coverage.detail


def test_documents_are_sampled_when_there_are_no_chunks(tmp_path, minilm_path, laws_dir, no_caches):
    cfg = healthy_config(tmp_path, minilm_path, [])
    (tmp_path / "Dataset" / "chunks" / "train.jsonl").unlink()
    cfg.ingest.input_dir = str(laws_dir / "pdf")
    coverage = by_name(doctor.diagnose(cfg))["tokenizer coverage"]
    assert "paragraphs from the first pages of the documents" in coverage.detail
    assert coverage.verdict == doctor.WARN


def test_high_unk_without_vocabulary_extension_fails(tmp_path, minilm_path, no_caches):
    cfg = healthy_config(tmp_path, minilm_path, [CHINESE] * 10)
    cfg.train.extend_vocab = "off"
    coverage = by_name(doctor.diagnose(cfg))["tokenizer coverage"]
    assert coverage.verdict == doctor.FAIL and "use a Chinese model" in coverage.detail


def test_broken_gpu_setup_fails_on_every_missing_piece(tmp_path, monkeypatch, no_caches):
    monkeypatch.setattr(doctor.gpu, "_import_vllm", lambda: (None, "not installed"))
    cfg = PipelineConfig(
        llm="Qwen/Qwen3-8B",
        embedding_model="maidalun1020/bce-embedding-base_v1",
        models_dir=str(tmp_path / "Models"),
        dataset_dir=str(tmp_path / "Dataset"),
        results_dir=str(tmp_path / "results"),
    ).resolve()
    checks = by_name(doctor.diagnose(cfg))

    assert checks["vllm"].verdict == doctor.FAIL and "not installed" in checks["vllm"].detail
    assert checks["llm"].verdict == doctor.FAIL and "offline-embft download" in checks["llm"].detail
    assert checks["embedding model"].verdict == doctor.FAIL
    assert checks["converted model"].verdict == doctor.WARN
    assert checks["tokenizer coverage"].verdict == doctor.WARN
    screen = io.StringIO()
    assert doctor.run(cfg, out=screen) is False
    assert screen.getvalue().rstrip().endswith("verdict: fix the FAIL lines before running")


def test_incomplete_llm_names_the_missing_shard(tmp_path, monkeypatch, no_caches):
    monkeypatch.setattr(doctor.gpu, "_import_vllm", lambda: ("0.11.0", ""))
    llm = tmp_path / "Models" / "Qwen" / "Qwen3-8B"
    llm.mkdir(parents=True)
    (llm / "config.json").write_text("{}", encoding="utf-8")
    (llm / "tokenizer.json").write_text("{}", encoding="utf-8")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (llm / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    (llm / "model-00001-of-00002.safetensors").write_bytes(b"x")
    cfg = PipelineConfig(llm="Qwen/Qwen3-8B", models_dir=str(tmp_path / "Models")).resolve()
    checks = by_name(doctor.diagnose(cfg))
    assert checks["vllm"].verdict == doctor.OK and "0.11.0" in checks["vllm"].detail
    assert checks["llm"].verdict == doctor.FAIL
    assert "model-00002-of-00002.safetensors" in checks["llm"].detail


def test_lifted_offline_variables_are_a_warning(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    check = doctor.check_offline()
    assert check.verdict == doctor.WARN and "HF_HUB_OFFLINE" in check.detail


def test_cli_exit_codes(tmp_path, minilm_path, monkeypatch, no_caches):
    from offline_embft.cli import app

    healthy = healthy_config(tmp_path, minilm_path, [ENGLISH] * 3)
    config = tmp_path / "healthy.yaml"
    keys = ("llm", "embedding_model", "models_dir", "dataset_dir", "results_dir")
    data = {key: getattr(healthy, key) for key in keys}
    data["generate"] = {"backend": "ict"}
    data["convert"] = {"out_dir": str(minilm_path)}
    config.write_text(json.dumps(data), encoding="utf-8")  # JSON is YAML
    result = CliRunner().invoke(app, ["doctor", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "embedding model" in result.output

    result = CliRunner().invoke(app, ["doctor", "--config", str(config), "--set", "embedding_model=nowhere/model"])
    assert result.exit_code == 1
    assert "FAIL  embedding model" in result.output


def test_gpu_line_on_a_cuda_machine(monkeypatch):
    """The GPU branch, with torch.cuda standing in for a real H100 (this CI machine has no GPU)."""
    from types import SimpleNamespace

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    props = SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=80 * doctor.GIB, major=9, minor=0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)  # torch's own is_bf16_supported runs on these
    check = doctor.check_gpu(PipelineConfig())
    assert check.verdict == doctor.OK
    assert check.detail.startswith("0: NVIDIA H100 80GB HBM3 80 GiB; 1: NVIDIA H100") and "bf16 yes" in check.detail


@pytest.mark.parametrize(
    ("body", "verdict", "expected"),
    [
        ('__version__ = "0.9.9"\n', doctor.OK, "0.9.9 imports cleanly"),
        ('raise ImportError("libcuda.so.1: cannot open shared object file")\n', doctor.FAIL, "libcuda.so.1"),
    ],
)
def test_vllm_is_imported_in_a_child_process(tmp_path, monkeypatch, body, verdict, expected):
    package = tmp_path / "site" / "vllm"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(body, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    check = doctor.check_vllm(PipelineConfig())  # the default backend is vllm
    assert check.verdict == verdict and expected in check.detail


def test_each_check_runs_only_for_the_stages_that_need_it(tmp_path, minilm_path, monkeypatch, no_caches):
    """The GPU server's config on this CPU machine: ingest's checks pass, generate's still FAIL, nothing is skipped
    when no stage is named."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same verdicts on a GPU CI machine
    monkeypatch.setattr(doctor.gpu, "_import_vllm", lambda: (None, "not installed"))
    from offline_embft.generate.llm.vllm_backend import VllmLLM

    monkeypatch.setattr(VllmLLM, "needs_gpu", True)  # not vLLM's CPU build (which `make install` puts here)
    cfg = healthy_config(tmp_path, minilm_path, [ENGLISH] * 3)
    cfg.llm, cfg.reranker_model = "Qwen/Qwen3-8B", "maidalun1020/bce-reranker-base_v1"  # neither on disk
    cfg.generate.backend = "vllm"

    ingest = by_name(doctor.diagnose(cfg, ["convert", "ingest"]))
    assert set(ingest) == {
        "python", "packages", "embedding model", "converted model", "disk", "offline env", "tokenizer coverage"
    }  # fmt: skip
    assert doctor.verdict(list(ingest.values())) != doctor.FAIL
    generate = by_name(doctor.diagnose(cfg, ["generate"]))
    assert {"gpu / cuda", "vllm", "llm"} <= {name for name, c in generate.items() if c.verdict == doctor.FAIL}
    assert "embedding model" not in generate and "reranker" not in generate
    reranker = by_name(doctor.diagnose(cfg, ["train-reranker"]))
    assert reranker["reranker"].verdict == doctor.FAIL and "vllm" not in reranker
    assert reranker["gpu / cuda"].verdict == doctor.WARN  # training on CPU runs, slowly; only vLLM needs the GPU

    everything = doctor.diagnose(cfg)
    assert [c.name for c in everything] == list(doctor.CHECKS), "a plain doctor runs every check, in table order"
    assert doctor.diagnose(cfg, []) == everything

    screen = io.StringIO()
    assert doctor.run(cfg, out=screen, stages=["ingest", "convert"]) is True
    head = screen.getvalue().split("\nOK    python")[0].splitlines()[1:]  # the scope line, wrapped like the table
    assert head[0].startswith("checked for convert, ingest; left out, as only other stages need them: gpu / cuda,")
    assert "FAIL" not in screen.getvalue() and "vllm" in " ".join(head) and max(map(len, head)) <= 119
    screen = io.StringIO()
    assert doctor.run(cfg, out=screen) is False
    assert screen.getvalue().splitlines()[1].startswith("checked for every stage (convert, ingest, generate, train,")

    with pytest.raises(UserError, match="report is not a stage; use one of convert, ingest"):
        doctor.diagnose(cfg, ["ingest", "report"])


def test_the_table_names_real_stages_and_the_checks_own_names():
    from offline_embft.core.config import STAGES

    for name, (_, stages) in doctor.CHECKS.items():
        assert stages and set(stages) <= set(STAGES), f"{name}: {stages}"
    assert {stage for _, stages in doctor.CHECKS.values() for stage in stages} == set(STAGES)
    assert doctor.needed("vllm", ["generate"]) and not doctor.needed("vllm", ["convert", "ingest", "train"])
    assert doctor.needed("disk", ["evaluate"]) and doctor.needed("vllm")


def test_cli_stage_option(tmp_path, minilm_path, monkeypatch, no_caches):
    """`doctor --stage ingest` passes on a CPU machine with a vLLM config that a plain `doctor` fails."""
    import torch

    from offline_embft.cli import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    from offline_embft.generate.llm.vllm_backend import VllmLLM

    monkeypatch.setattr(VllmLLM, "needs_gpu", True)  # a GPU server's vLLM, not the CPU build installed here
    healthy = healthy_config(tmp_path, minilm_path, [ENGLISH] * 3)
    config = tmp_path / "gpu.yaml"
    keys = ("embedding_model", "models_dir", "dataset_dir", "results_dir")
    data = {key: getattr(healthy, key) for key in keys}
    data.update(llm="Qwen/Qwen3-8B", generate={"backend": "vllm"}, convert={"out_dir": str(minilm_path)})
    config.write_text(json.dumps(data), encoding="utf-8")

    result = CliRunner().invoke(app, ["doctor", "--config", str(config), "--stage", "convert", "--stage", "ingest"])
    assert result.exit_code == 0, result.output
    assert "checked for convert, ingest;" in result.output and "gpu / cuda" not in result.output.split("\n", 2)[2]
    result = CliRunner().invoke(app, ["doctor", "--config", str(config), "--stage", "generate"])
    assert result.exit_code == 1 and "FAIL  gpu / cuda" in result.output and "FAIL  llm" in result.output
    result = CliRunner().invoke(app, ["doctor", "--config", str(config), "--stage", "report"])
    assert result.exit_code == 2 and "'report' is not one of" in result.output
