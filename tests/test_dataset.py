"""QADataset.merge: QA sets of different documents become one training set; a clash of ids is refused."""

from __future__ import annotations

import pytest

from offline_embft.dataset import QADataset
from offline_embft.errors import UserError


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
