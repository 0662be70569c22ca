"""A new document format and a new LLM backend are one module plus one registration line.

Each test registers a toy through the real registry (monkeypatch only undoes the registration afterwards) and shows
the code that asks the registry using it with no other file touched: ingest reads a ``.toy`` file; create_llm,
replica planning and doctor treat a ``toy`` backend by the facts its class states.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from offline_embft.core.config import GenerateConfig, IngestConfig, PipelineConfig
from offline_embft.core.config import generate as generate_config
from offline_embft.core.errors import UserError
from offline_embft.generate.llm import BatchLLM, Sampling, backend_class, create_llm, registry
from offline_embft.generate.llm.vllm_backend import cpu_build_installed
from offline_embft.ingest import loaders
from offline_embft.ingest import run as ingest
from offline_embft.ingest.loaders import LoadError, RawDocument, SkipReason

ARTICLES = [
    "第一条 为了规范公司的组织和行为，保护公司、股东、职工和债权人的合法权益，制定本法。",
    "第二条 本法所称公司，是指依照本法在中华人民共和国境内设立的有限责任公司和股份有限公司。",
    "第三条 公司是企业法人，有独立的法人财产，享有法人财产权。公司以其全部财产对公司的债务承担责任。",
    "第四条 有限责任公司的股东以其认缴的出资额为限对公司承担责任。",
]


# ---------------------------------------------------------------------------------------------------------------
# A toy document format: one JSON object {"pages": [...]} per file


def load_toy(path: Path) -> RawDocument:
    """The whole "module" of the toy format: a loader returning pages, or a LoadError saying what is wrong."""
    try:
        pages = json.loads(path.read_text(encoding="utf-8"))["pages"]
    except (ValueError, KeyError):
        raise LoadError(SkipReason.corrupt, "corrupt toy file: expected a JSON object with pages") from None
    return RawDocument(path, "toy", pages, paged=True)


@pytest.fixture
def toy_format(monkeypatch):
    for table in (loaders.LOADERS, loaders.SUFFIXES):
        monkeypatch.setitem(table, ".toy", None)  # so that the registration below is undone after the test
    return loaders.register_loader(load_toy, "toy", ".toy")


def test_a_registered_loader_is_read_by_ingest(toy_format, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "公司法.toy").write_text(json.dumps({"pages": ARTICLES[:2], "x": 1}, ensure_ascii=False), encoding="utf-8")
    (docs / "续.toy").write_text(json.dumps({"pages": ARTICLES[2:]}, ensure_ascii=False), encoding="utf-8")
    (docs / "坏.toy").write_text("not json", encoding="utf-8")
    out = ingest.run(IngestConfig(input_dir=str(docs), out_dir=str(tmp_path / "chunks")))
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert {item["source"] for item in stats["read"]} == {"公司法.toy", "续.toy"}
    assert [(s["source"], s["reason"]) for s in stats["skipped"]] == [("坏.toy", "corrupt")]
    chunks = [
        json.loads(line) for name in ("train.jsonl", "val.jsonl") for line in (out / name).open(encoding="utf-8")
    ]
    text = "\n".join(c["text"] for c in chunks)
    assert all(article.split(" ", 1)[1][:20] in text for article in ARTICLES)
    assert {c["source"] for c in chunks} == {"公司法.toy", "续.toy"}


def test_an_unregistered_suffix_is_refused_naming_the_registered_ones(toy_format, tmp_path):
    path = tmp_path / "a.xyz"
    path.write_text("第一条", encoding="utf-8")
    with pytest.raises(LoadError, match=r"unsupported file type \.xyz \(.*\.pdf, \.toy, \.txt\)") as info:
        loaders.load(path)
    assert info.value.reason is SkipReason.unsupported


# ---------------------------------------------------------------------------------------------------------------
# A toy backend: answers every prompt with one fixed question per requested question


class ToyLLM(BatchLLM):
    """The whole "module" of the toy backend: its facts, how it builds itself, and its one engine call."""

    backend = "toy"
    needs_local_weights = False
    runs_replicas = True

    @classmethod
    def from_config(cls, cfg: Any, template: str) -> ToyLLM:
        return cls(model_name="toy", sampling=Sampling.from_config(cfg), fingerprint="toy-v1")

    def _generate(self, prompts: list[str], sampling: Sampling) -> list[str | None]:
        return ["依照本法设立的公司应当具备哪些条件？" for _ in prompts]


class GpuToyLLM(ToyLLM):
    """The same toy, stating that it needs a GPU and local weights (as vLLM does), two GPUs per engine."""

    backend = "gpu-toy"
    needs_gpu = True
    needs_local_weights = True

    @classmethod
    def gpus_per_engine(cls, cfg: Any) -> int:
        return 2


@pytest.fixture
def toy_backends(monkeypatch):
    monkeypatch.setattr(generate_config, "BACKENDS", generate_config.BACKENDS)  # undone after the test
    for cls in (ToyLLM, GpuToyLLM):
        monkeypatch.setitem(registry.BACKENDS, cls.backend, None)
        registry.register_backend(cls)
    return ToyLLM, GpuToyLLM


def test_a_registered_backend_is_built_by_create_llm(toy_backends):
    llm = create_llm(backend="toy", questions_per_chunk=1)
    assert isinstance(llm, ToyLLM) and llm.identity == "toy:toy-v1"
    assert (
        llm.complete("第六条 公司应当有自己的名称。公司的名称权受法律保护。").text
        == "依照本法设立的公司应当具备哪些条件？"
    )
    assert GenerateConfig(backend="toy").backend == "toy", "the config accepts a registered name"
    with pytest.raises(UserError, match="unknown backend 'nope'; use vllm, transformers, openai, ict, toy, gpu-toy"):
        backend_class("nope")


def test_replicas_and_doctor_ask_the_backend_for_its_facts(toy_backends, monkeypatch, tmp_path):
    from offline_embft import doctor
    from offline_embft.doctor.lines import runs_vllm
    from offline_embft.generate.scale import replicas

    monkeypatch.setattr(replicas, "visible_gpus", lambda: ["0", "1", "2", "3"])
    plan = replicas.plan_replicas(GenerateConfig(backend="gpu-toy"))
    assert plan.size == 2 and plan.gpu_groups == [["0", "1"], ["2", "3"]], "two GPUs per engine, as the class says"
    assert replicas.plan_replicas(GenerateConfig(backend="toy", data_parallel_size="2")).cpu_sets

    cfg = PipelineConfig(models_dir=str(tmp_path / "Models"))
    cfg.generate.backend = "toy"
    assert doctor.check_llm(cfg).detail == "not needed (backend toy)"
    assert doctor.check_vllm(cfg).detail.startswith("not needed (backend toy)")
    assert doctor.check_compiler(cfg).verdict == doctor.OK
    cfg.generate.backend, cfg.llm = "gpu-toy", ""
    line = doctor.check_llm(cfg)
    assert line.verdict == doctor.FAIL and line.detail == "backend gpu-toy needs an LLM: set `llm` in the config"
    assert runs_vllm(cfg, ["generate"]) and not runs_vllm(cfg, ["train"]), "a GPU engine only where it generates"


def test_the_configs_backend_choices_are_the_registered_backends():
    from offline_embft.core import config

    assert tuple(registry.BACKENDS) == config.BACKENDS == generate_config.BACKENDS
    # vLLM needs a GPU unless it is its CPU build (what `make install` puts on a machine without an NVIDIA GPU).
    assert backend_class("vllm").needs_gpu == (not cpu_build_installed()) and backend_class("vllm").needs_local_weights
    assert backend_class("transformers").needs_local_weights and not backend_class("transformers").needs_gpu
    assert not backend_class("openai").runs_replicas and backend_class("openai").needs_base_url
    assert not backend_class("ict").needs_local_weights and backend_class("ict").pseudo_queries
