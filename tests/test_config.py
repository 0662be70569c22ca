"""Config loading, overrides, validation and the artifact layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from offline_embft.core.config import PipelineConfig, apply_overrides, load_config, save_config
from offline_embft.core.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_load_and_resolve(name):
    cfg = load_config(REPO / "configs" / name).resolve()
    assert cfg.ingest.out_dir and cfg.train.out_dir and cfg.evaluate.out_dir
    assert cfg.evaluate.models, "evaluate compares at least the base model"


def test_default_layout_follows_design():
    cfg = load_config(REPO / "configs" / "default.yaml").resolve()
    assert cfg.ingest.input_dir == "Dataset/PDF"
    assert cfg.ingest.out_dir == "Dataset/chunks"
    assert cfg.convert.model == "Models/maidalun1020/bce-embedding-base_v1"
    assert cfg.convert.out_dir == "Models/maidalun1020/bce-embedding-base_v1-st"
    assert cfg.train.train_file == "Dataset/datasets/train_dataset.json"
    assert cfg.train.out_dir == "Models/model_outdir/bce-finetuned"
    assert cfg.evaluate.models == [cfg.convert.out_dir, cfg.train.out_dir]


def test_precedence_yaml_then_set_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 3.0e-5\n  epochs: 5\n", encoding="utf-8")
    cfg = load_config(path, ["train.epochs=2", "evaluate.models=[a, b]"])
    assert cfg.train.lr == pytest.approx(3e-5)
    assert cfg.train.epochs == 2
    assert cfg.evaluate.models == ["a", "b"]
    apply_overrides(cfg.train, lr=1e-4, epochs=None)
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.train.epochs == 2


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("train:\n  lrr: 1\n", "unknown config key train.lrr"),
        ("train:\n  epochs: many\n", "train.epochs must be int"),
        ("generate:\n  backend: gpt4\n", "generate.backend must be one of"),
        ("ingest:\n  chunk_overlap: 400\n", "chunk_overlap"),
        ("train: [1, 2]\n", "train must be a mapping"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_config(path)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_config_file_names_the_fix(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = PipelineConfig().resolve()
    out = save_config(cfg.train, tmp_path / "train_config.yaml")
    data = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert data["lr"] == cfg.train.lr and data["out_dir"] == cfg.train.out_dir


def test_atomic_outputs_are_readable_by_others(tmp_path):
    import os
    import stat

    from offline_embft.core.io import atomic_dir, write_json

    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "out.json", {"a": 1})
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "x.txt").write_text("x", encoding="utf-8")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755


def test_every_key_is_documented_with_its_help():
    """docs/config.md is generated from the config fields; a field added without regenerating it fails here."""
    from typer.testing import CliRunner

    from offline_embft.cli import app
    from offline_embft.core.config.help import describe, keys_markdown

    listed = CliRunner().invoke(app, ["config", "--keys"])
    assert listed.exit_code == 0, listed.output
    for key, _, text in describe():
        assert text, f"config key {key} has no help text"
        assert f"| `{key}` |" in listed.stdout and text.replace("|", "/") in listed.stdout
    docs = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    assert docs == keys_markdown(), "docs/config.md is stale: run `offline-embft config --keys > docs/config.md`"


def test_cli_flags_take_help_and_choices_from_the_config_fields():
    import typer
    from typer.testing import CliRunner

    from offline_embft.cli import app
    from offline_embft.core import config
    from offline_embft.core.config.help import field_help

    commands = typer.main.get_command(app).commands
    sections = {
        "ingest": config.IngestConfig,
        "generate": config.GenerateConfig,
        "convert": config.ConvertConfig,
        "train": config.TrainConfig,
        "evaluate": config.EvaluateConfig,
        "train-reranker": config.TrainRerankerConfig,
    }
    checked = 0
    for name, section in sections.items():
        for param in commands[name].params:
            help_text = getattr(param, "help", None) or ""
            if "(config: " not in help_text:
                continue
            key = help_text.rsplit("(config: ", 1)[1].split(",")[0].rstrip(")")
            assert key.startswith(f"{name.replace('-', '_')}."), (name, param.name, key)
            assert help_text == field_help(section, key.split(".", 1)[1])
            checked += 1
    assert checked >= 25, f"only {checked} flags take their help from the config"
    from offline_embft.cli import Backend, Loss

    assert tuple(m.value for m in Loss) == config.LOSSES and tuple(m.value for m in Backend) == config.BACKENDS
    result = CliRunner().invoke(app, ["train", "x.json", "--loss", "triplet"])
    assert result.exit_code == 2 and "cached-mnrl" in result.output, "typer checks the config's choices"


def test_on_off_choices_survive_yaml_booleans(tmp_path):
    """YAML reads a bare `off` as False: `--set train.extend_vocab=off` and `extend_vocab: on` still mean off/on."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  extend_vocab: on\n", encoding="utf-8")
    assert load_config(path).train.extend_vocab == "on"
    assert load_config(None, ["train.extend_vocab=off"]).train.extend_vocab == "off"


def test_a_config_built_with_paths_saves_as_plain_yaml(tmp_path):
    """Library users pass pathlib.Path; saving the config beside a trained model must not fail after training."""
    import yaml

    from offline_embft.core.config import EvaluateConfig, TrainConfig, save_config

    save_config(TrainConfig(model=tmp_path / "base", train_file=tmp_path / "train.json"), tmp_path / "train.yaml")
    saved = yaml.safe_load((tmp_path / "train.yaml").read_text(encoding="utf-8"))
    assert saved["model"] == str(tmp_path / "base") and saved["train_file"] == str(tmp_path / "train.json")
    save_config(EvaluateConfig(models=[tmp_path / "a", "b"]), tmp_path / "evaluate.yaml")
    assert yaml.safe_load((tmp_path / "evaluate.yaml").read_text(encoding="utf-8"))["models"] == [
        str(tmp_path / "a"),
        "b",
    ]
