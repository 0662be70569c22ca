"""General sets for retention: the download from a fake hub (resumable, verified, subsampled, atomic), the BEIR reader
and writer, bundle and doctor carrying and listing them.

The hub is mocked at ``huggingface_hub.snapshot_download``: the fake writes MTEB's layout of a C-MTEB task (a dataset
card with three configs of the ``dev`` split, parquet files) into ``local_dir`` the way huggingface_hub 2.5 does — a
file is written to ``.cache/huggingface/download/<hash>.<etag>.incomplete`` and moved into place when whole, with a
metadata record holding its etag (an LFS file's SHA-256); a cut connection leaves the partial file and raises the
transport error huggingface_hub gives up with; the next call resumes it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from offline_embft.convert import general_sets
from offline_embft.core import beir
from offline_embft.core.dataset import QADataset
from offline_embft.core.errors import UserError

REPO = Path(__file__).resolve().parents[1]

CARD = """---
configs:
- config_name: corpus
  data_files:
  - split: dev
    path: corpus/dev-*
- config_name: default
  data_files:
  - split: dev
    path: data/dev-*
- config_name: queries
  data_files:
  - split: dev
    path: queries/dev-*
---
# T2Retrieval (fake)
"""


def fake_repo(root: Path, n_queries: int = 40, n_corpus: int = 400) -> Path:
    """A C-MTEB task as MTEB 2.x's mteb/T2Retrieval stores it: parquet configs corpus, queries, default (qrels)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True)
    (root / "README.md").write_text(CARD, encoding="utf-8")
    docs = [f"d{i}" for i in range(n_corpus)]
    tables = {
        "corpus": pa.table(
            {"_id": docs, "title": [""] * n_corpus, "text": [f"第{i}段 文本内容 {i * 7}" for i in range(n_corpus)]}
        ),
        "queries": pa.table(
            {"_id": [f"q{i}" for i in range(n_queries)], "text": [f"问题{i}是什么" for i in range(n_queries)]}
        ),
        "data": pa.table(
            {
                # Two positives per query, and a score-0 pair (not relevant) that must not count.
                "query-id": [f"q{i}" for i in range(n_queries) for _ in range(3)],
                "corpus-id": [docs[(i * 3 + k) % n_corpus] for i in range(n_queries) for k in range(3)],
                "score": [1, 1, 0] * n_queries,
            }
        ),
    }
    for folder, table in tables.items():
        (root / folder).mkdir()
        pq.write_table(table, root / folder / "dev-00000-of-00001.parquet")
    return root


class FakeHub:
    """Stands in for ``huggingface_hub.snapshot_download`` (repo_type="dataset", local_dir=...)."""

    def __init__(self, source: Path):
        self.source = source
        self.calls: list[dict] = []
        self.interrupt: str | None = None  # cut the connection halfway through this file (once)
        self.corrupt: str | None = None  # serve this file damaged (a broken proxy), with the hub's etag
        self.missing_repo = False

    def __call__(self, repo_id, *, repo_type=None, revision=None, local_dir=None, **kwargs):
        import httpx2
        from huggingface_hub._local_folder import get_local_download_paths, write_download_metadata

        local = Path(local_dir)
        self.calls.append({"repo_id": repo_id, "repo_type": repo_type, "revision": revision, "local_dir": local})
        if self.missing_repo:
            raise _repository_not_found(repo_id)
        for file in sorted(p for p in self.source.rglob("*") if p.is_file()):
            name = file.relative_to(self.source).as_posix()
            data = file.read_bytes()
            lfs = name.endswith(".parquet")
            etag = hashlib.sha256(data).hexdigest() if lfs else hashlib.sha1(data).hexdigest()
            paths = get_local_download_paths(local, name)
            if paths.file_path.is_file() and paths.metadata_path.is_file():
                continue  # already downloaded, and its record says so
            partial = paths.incomplete_path(etag)
            have = partial.read_bytes() if partial.is_file() else b""  # resumed with a Range request
            if name == self.interrupt:
                self.interrupt = None
                partial.write_bytes(data[: len(data) // 2])
                raise httpx2.RemoteProtocolError(
                    "peer closed connection without sending complete message body "
                    f"(received {len(data) // 2} bytes, expected {len(data)})"
                )
            served = have + data[len(have) :]
            if name == self.corrupt:
                self.corrupt = None
                served = served[:-8] + b"\0" * 8
            partial.write_bytes(served)
            paths.file_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(partial, paths.file_path)
            write_download_metadata(local, name, "c" * 40, etag)
        return str(local)


def _repository_not_found(repo_id: str) -> Exception:
    """What huggingface_hub 2.5 raises for a repository that does not exist (its own 404 handling)."""
    import httpx2
    from huggingface_hub.utils import hf_raise_for_status

    request = httpx2.Request("GET", f"https://huggingface.co/api/datasets/{repo_id}/revision/main")
    response = httpx2.Response(404, request=request, headers={"X-Error-Code": "RepoNotFound"}, json={"error": "x"})
    try:
        hf_raise_for_status(response)
    except Exception as exc:
        return exc
    raise AssertionError("hf_raise_for_status accepted a 404")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    import huggingface_hub

    fake = FakeHub(fake_repo(tmp_path / "hub-repo"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return fake


def test_download_subsamples_verifies_and_resumes_after_a_cut(tmp_path, hub):
    dataset_dir = tmp_path / "Dataset"
    target = dataset_dir / "general" / "T2Retrieval"
    staging = dataset_dir / "general" / ".T2Retrieval.download"

    hub.interrupt = "corpus/dev-00000-of-00001.parquet"
    cut = r"failed \(peer closed connection.*run `offline-embft download` again"
    with pytest.raises(UserError, match=cut) as info:
        general_sets.fetch_general("T2Retrieval", dataset_dir, queries=10, corpus=50, seed=1)
    assert "\n" not in str(info.value) and not target.exists()
    assert list((staging / ".cache/huggingface/download").rglob("*.incomplete"))  # the half file is kept

    path = general_sets.fetch_general("T2Retrieval", dataset_dir, queries=10, corpus=50, seed=1)
    assert path == target and not staging.exists()
    assert [c["local_dir"] for c in hub.calls] == [staging, staging]
    assert hub.calls[0]["repo_id"] == "mteb/T2Retrieval" and hub.calls[0]["repo_type"] == "dataset"
    assert hub.calls[0]["revision"] == general_sets.HUB_SETS["T2Retrieval"].revision

    data = beir.load_set(path)
    assert len(data.queries) == 10 and len(data.corpus) == 50
    for qid, docs in data.relevant_docs.items():  # only the score-1 pairs; a query's positives are all there
        n = int(qid[1:])
        assert docs == [f"d{n * 3}", f"d{n * 3 + 1}"]
    manifest = json.loads((path / beir.MANIFEST).read_text(encoding="utf-8"))
    assert manifest["source"].startswith("huggingface:mteb/T2Retrieval@") and manifest["full_queries"] == 40
    assert manifest["queries"] == 10 and manifest["corpus"] == 50

    # Idempotent: the same settings fetch nothing; the same seed draws the same subsample.
    assert general_sets.fetch_general("T2Retrieval", dataset_dir, queries=10, corpus=50, seed=1) == path
    assert len(hub.calls) == 2
    again = general_sets.subsample(general_sets.read_snapshot(_snapshot(tmp_path, hub)), 10, 50, 1)
    assert again.queries == data.queries and set(again.corpus) == set(data.corpus)


def _snapshot(tmp_path: Path, hub: FakeHub) -> Path:
    local = tmp_path / "again"
    hub(repo_id="mteb/T2Retrieval", repo_type="dataset", local_dir=str(local))
    return local


def test_a_damaged_file_is_caught_by_its_checksum_and_fetched_again(tmp_path, hub):
    dataset_dir = tmp_path / "Dataset"
    hub.corrupt = "queries/dev-00000-of-00001.parquet"
    with pytest.raises(UserError, match=r"corrupt: queries/dev-00000-of-00001\.parquet did not match"):
        general_sets.fetch_general("T2Retrieval", dataset_dir, queries=5, corpus=20)
    assert not (dataset_dir / "general" / "T2Retrieval").exists()
    path = general_sets.fetch_general("T2Retrieval", dataset_dir, queries=5, corpus=20)
    assert len(beir.load_set(path).queries) == 5


def test_hub_errors_are_one_line(tmp_path, hub):
    hub.missing_repo = True
    with pytest.raises(UserError, match=r"mteb/T2Retrieval@cf778c0e is not on the hub") as info:
        general_sets.fetch_general("T2Retrieval", tmp_path / "Dataset", queries=5, corpus=20)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"unknown general set 'Nope'"):
        general_sets.fetch_general("Nope", tmp_path / "Dataset", queries=5, corpus=20)


def test_beir_round_trip_and_our_json_load_alike(tmp_path):
    data = QADataset(
        queries={"q1": "问题一", "q2": "问题二"},
        corpus={"a": "甲", "b": "乙", "c": "丙"},
        relevant_docs={"q1": ["a"], "q2": ["b", "c"]},
    )
    beir.write_beir(data, tmp_path / "set")
    data.save(tmp_path / "set.json")
    for path in (tmp_path / "set", tmp_path / "set.json"):
        loaded = beir.load_set(path)
        assert (loaded.queries, loaded.corpus, loaded.relevant_docs) == (data.queries, data.corpus, data.relevant_docs)
    assert beir.set_name(tmp_path / "set") == "set" and beir.set_name(tmp_path / "set.json") == "set"

    # A hand-made BEIR set: titles joined, score 0 ignored, a query without positives left out.
    own = tmp_path / "own"
    (own / "qrels").mkdir(parents=True)
    (own / "corpus.jsonl").write_text('{"_id": 1, "title": "标题", "text": "正文"}\n{"_id": "2", "text": "别的"}\n')
    (own / "queries.jsonl").write_text('{"_id": "x", "text": "问"}\n{"_id": "y", "text": "没有答案"}\n')
    (own / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nx\t1\t1\ny\t2\t0\n")
    loaded = beir.load_set(own)
    assert loaded.corpus == {"1": "标题 正文", "2": "别的"} and loaded.relevant_docs == {"x": ["1"]}

    (own / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nx\t9\t1\n")
    with pytest.raises(UserError, match="'9', which is not in the corpus"):
        beir.load_set(own)
    with pytest.raises(UserError, match="not found; a retrieval set is a directory in BEIR layout"):
        beir.load_set(tmp_path / "nothing")


def test_doctor_lists_and_bundle_carries_general_sets(tmp_path, no_network):
    dataset_dir = tmp_path / "Dataset"
    data = QADataset(queries={"q": "问"}, corpus={"a": "答"}, relevant_docs={"q": ["a"]})
    beir.write_beir(data, dataset_dir / "general" / "T2Retrieval", {"source": "huggingface:mteb/T2Retrieval@x"})
    (dataset_dir / "general" / ".DuRetrieval.download").mkdir()  # unfinished: not a set, not carried
    (found,) = beir.list_general(dataset_dir)
    assert (found.name, found.queries, found.corpus, found.source) == (
        "T2Retrieval",
        1,
        1,
        "huggingface:mteb/T2Retrieval@x",
    )

    spec = importlib.util.spec_from_file_location("bundle", REPO / "scripts" / "bundle.py")
    bundle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bundle)
    carried = bundle.copy_general(dataset_dir, tmp_path / "out" / "general")
    assert carried == ["T2Retrieval"]
    assert beir.load_set(tmp_path / "out" / "general" / "T2Retrieval").queries == {"q": "问"}


def test_download_cli_needs_no_hub_for_a_path_set(tmp_path):
    """A set given as a path is checked, not fetched (and a bad one is a one-line error)."""
    data = QADataset(queries={"q": "问"}, corpus={"a": "答"}, relevant_docs={"q": ["a"]})
    data.save(tmp_path / "mine.json")
    assert general_sets.download_general([str(tmp_path / "mine.json")], tmp_path / "Dataset", 5, 5, 1) == [
        tmp_path / "mine.json"
    ]
    with pytest.raises(UserError, match="not found"):
        general_sets.download_general([str(tmp_path / "missing.json")], tmp_path / "Dataset", 5, 5, 1)


def test_doctor_names_each_configured_set_and_a_missing_one(tmp_path):
    from offline_embft import doctor
    from offline_embft.core.config import load_config

    data = QADataset(queries={"q": "问"}, corpus={"a": "答", "b": "别的"}, relevant_docs={"q": ["a"]})
    dataset_dir = tmp_path / "Dataset"
    beir.write_beir(data, dataset_dir / "general" / "T2Retrieval", {"queries": 1, "corpus": 2, "source": "hub:x"})
    own = data.save(tmp_path / "own.json")

    def line(sets: list[str]):
        cfg = load_config(None, [f"dataset_dir={dataset_dir}", f"general.sets={sets!r}"]).resolve()
        (check,) = [c for c in doctor.diagnose(cfg, ["evaluate"]) if c.name == "general sets"]
        return check

    ok = line(["T2Retrieval", str(own)])
    assert (
        ok.verdict == doctor.OK
        and ok.detail == "T2Retrieval (1 questions, 2 passages, hub:x); own (1 questions, 2 passages, your own)"
    )
    missing = line(["T2Retrieval", "DuRetrieval"])
    assert missing.verdict == doctor.FAIL and missing.detail.startswith("DuRetrieval: retrieval set")
    assert "run `offline-embft download` on a connected machine" in missing.detail
    none = line([])
    assert none.verdict == doctor.OK and "T2Retrieval in" in none.detail and "unused" in none.detail


def test_download_of_a_config_fetches_its_general_sets(tmp_path, hub, minilm_path):
    from offline_embft.convert import download
    from offline_embft.core.config import load_config

    sets = ["general.sets=[T2Retrieval]", "general.queries=6", "general.corpus=30", f"dataset_dir={tmp_path / 'D'}"]
    cfg = load_config(None, [f"embedding_model={minilm_path}", "llm=", "generate.backend=ict", *sets])
    assert download.download(cfg) == [minilm_path, tmp_path / "D" / "general" / "T2Retrieval"]
    assert len(beir.load_set(tmp_path / "D" / "general" / "T2Retrieval").corpus) == 30


def test_a_present_set_is_kept_when_the_hub_is_out_of_reach(tmp_path, hub):
    """On the air-gapped server `all` runs download too: a set carried across is used even if its size differs."""
    dataset_dir = tmp_path / "Dataset"
    path = general_sets.fetch_general("T2Retrieval", dataset_dir, queries=5, corpus=20)
    hub.missing_repo = True  # any hub failure
    assert general_sets.fetch_general("T2Retrieval", dataset_dir, queries=300, corpus=3000) == path
    assert len(beir.load_set(path).queries) == 5
