"""QADataset.merge: QA sets of different documents become one training set; a clash of ids is refused."""

from __future__ import annotations

import pytest

from offline_embft.core.dataset import QADataset
from offline_embft.core.errors import UserError


def test_merging_qa_sets_of_two_statutes_keeps_every_question_and_answer(laws_dir):
    company = QADataset.load(laws_dir / "qa" / "company_law.json")
    insurance = QADataset.load(laws_dir / "qa" / "insurance_law.json")
    merged = QADataset.merge([company, insurance])
    assert len(merged) == len(company) + len(insurance)
    assert len(merged.corpus) == len(company.corpus) + len(insurance.corpus)
    for part in (company, insurance):
        for qid, docs in part.relevant_docs.items():
            assert merged.relevant_docs[qid] == docs and merged.queries[qid] == part.queries[qid]
    merged.validate("merged")


def test_an_id_meaning_two_things_is_refused():
    one = QADataset({"q1": "问题一"}, {"d1": "第一条"}, {"q1": ["d1"]})
    same = QADataset({"q1": "问题一"}, {"d1": "第一条"}, {"q1": ["d1"]})
    assert len(QADataset.merge([one, same])) == 1  # the same entry twice is not a clash
    other = QADataset({"q2": "问题二"}, {"d1": "第二条"}, {"q2": ["d1"]})
    with pytest.raises(UserError, match="corpus id 'd1'"):
        QADataset.merge([one, other])


def test_a_subset_keeps_its_questions_with_their_passages_or_the_whole_corpus(laws_dir):
    full = QADataset.load(laws_dir / "qa" / "company_law.json")
    picked = list(full.queries)[10:14][::-1]
    part = full.subset(picked)
    assert list(part.queries) == picked and all(part.relevant_docs[q] == full.relevant_docs[q] for q in picked)
    assert set(part.corpus) == {doc for q in picked for doc in full.relevant_docs[q]}
    assert list(part.corpus) == [doc for doc in full.corpus if doc in part.corpus]  # the corpus keeps its order
    part.validate("subset")
    assert full.subset(picked, keep_corpus=True).corpus == full.corpus
