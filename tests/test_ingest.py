"""The ingest stage end to end: real statute PDFs, bad inputs, encodings, the split, sizing and atomic output."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from offline_embft.cli import app
from offline_embft.core.chunks import Chunk
from offline_embft.core.config import IngestConfig, load_config
from offline_embft.core.errors import UserError
from offline_embft.core.io import read_jsonl
from offline_embft.ingest import chunking, documents
from offline_embft.ingest import run as ingest

COMPANY_LAW = "中华人民共和国公司法.pdf"
FUTURES_LAW = "中华人民共和国期货和衍生品法.pdf"

ARTICLES = [
    "第一条 为了规范公司的组织和行为，保护公司、股东、职工和债权人的合法权益，完善中国特色现代企业制度，"
    "弘扬企业家精神，维护社会经济秩序，促进社会主义市场经济的发展，根据宪法，制定本法。",
    "第二条 本法所称公司，是指依照本法在中华人民共和国境内设立的有限责任公司和股份有限公司。",
    "第三条 公司是企业法人，有独立的法人财产，享有法人财产权。公司以其全部财产对公司的债务承担责任。",
    "第四条 有限责任公司的股东以其认缴的出资额为限对公司承担责任；"
    "股份有限公司的股东以其认购的股份为限对公司承担责任。",
    "第五条 设立公司应当依法制定公司章程。公司章程对公司、股东、董事、监事、高级管理人员具有约束力。",
    "第六条 公司应当有自己的名称。公司名称应当符合国家有关规定。公司的名称权受法律保护。",
]


def _cfg(input_dir: Path, out_dir: Path, **kwargs) -> IngestConfig:
    return IngestConfig(input_dir=str(input_dir), out_dir=str(out_dir), **kwargs)


def _outputs(out_dir: Path) -> tuple[list[dict], list[dict], dict]:
    stats = json.loads((out_dir / "stats.json").read_text(encoding="utf-8"))
    return read_jsonl(out_dir / "train.jsonl"), read_jsonl(out_dir / "val.jsonl"), stats


def _assert_no_leakage(train: list[dict], val: list[dict]) -> None:
    """No chunk text in both splits, and no chunk overlap (a chunk's tail repeated at the next one's head) across."""
    assert not {c["text"] for c in train} & {c["text"] for c in val}, "a chunk is in both splits"
    for a in train:
        for b in val:
            for first, second in ((a["text"], b["text"]), (b["text"], a["text"])):
                shared = [k for k in range(20, min(len(first), len(second)) + 1) if first.endswith(second[:k])]
                assert not shared, f"chunk overlap crosses the split: {second[: shared[-1]]}"


def _write_text_docs(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        body = "\n".join(f"{a[:4]}（文件{i}）{a[4:]}" for a in ARTICLES)
        (folder / f"doc{i}.txt").write_text(body, encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# Real PDFs


@pytest.fixture(scope="module")
def company_law_run(tmp_path_factory, laws_dir):
    """One real statute PDF ingested by characters (a single file: split by chunk)."""
    docs = tmp_path_factory.mktemp("docs")
    shutil.copy(laws_dir / "pdf" / COMPANY_LAW, docs / COMPANY_LAW)
    out = tmp_path_factory.mktemp("out") / "chunks"
    ingest.run(_cfg(docs, out, chunk_size=300, chunk_overlap=30, seed=7))
    return out


def test_real_pdf_chunks_are_clean_and_know_their_pages(company_law_run):
    train, val, stats = _outputs(company_law_run)
    chunks = train + val
    assert stats["files"] == {"found": 1, "read": 1, "skipped": 0}
    assert stats["read"][0]["pages"] == 27
    for chunk in chunks:
        assert set(chunk) == {"id", "text", "source", "pages", "headings"}
        assert chunk["source"] == COMPANY_LAW
        assert chunk["pages"] and all(1 <= p <= 27 for p in chunk["pages"])
        assert chunk["pages"] == sorted(chunk["pages"])
        assert not re.search(r"第\s*\d+\s*页", chunk["text"]), "page footer left in a chunk"
        assert len(chunk["text"]) <= 300
        for line in chunk["text"].split("\n")[:-1]:
            assert re.search(r"[。；：]$", line) or re.match(r"^(中华人民共和国公司法|第.+[章节] .+)$", line), line
    # The running header (the law's name on every page) survives only as the title at the very start.
    assert sum(c["text"].count("中华人民共和国公司法") for c in chunks) == 1
    assert chunks[0]["text"].startswith("中华人民共和国公司法\n第一章 总则\n第一条 为了规范公司的组织和行为")
    last = max(chunks, key=lambda c: c["pages"][-1])
    assert last["pages"][-1] == 27
    # A sentence that runs from page 26 onto page 27 is whole, in a chunk that names both pages.
    spanning = next(c for c in chunks if "国家控股的企业之间不仅因为同受国家控股而具有关联关系" in c["text"])
    assert spanning["pages"] == [26, 27] or spanning["pages"][-2:] == [26, 27]


def test_single_file_is_split_by_chunk_without_leakage(company_law_run):
    train, val, stats = _outputs(company_law_run)
    assert stats["split"]["mode"] == "single-file-by-chunk"
    assert "only one document" in stats["split"]["note"]
    assert train and val
    share = sum(len(c["text"]) for c in val) / sum(len(c["text"]) for c in train + val)
    assert 0.2 < share < 0.4
    _assert_no_leakage(train, val)
    ids = [c["id"] for c in train + val]
    assert len(ids) == len(set(ids))


def test_chunk_ids_are_stable_content_hashes(tmp_path):
    _write_text_docs(tmp_path / "docs", 3)
    first = _outputs(ingest.run(_cfg(tmp_path / "docs", tmp_path / "a")))
    second = _outputs(ingest.run(_cfg(tmp_path / "docs", tmp_path / "b")))
    ids = [c["id"] for c in first[0] + first[1]]
    assert ids == [c["id"] for c in second[0] + second[1]]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
    assert (tmp_path / "a" / ingest.CONFIG_FILE).is_file()


def test_token_sized_chunks_never_exceed_max_seq_length(laws_dir, minilm_path, tmp_path, caplog):
    from pypdf import PdfReader, PdfWriter

    from offline_embft.core.tokenizer_check import load_tokenizer

    docs = tmp_path / "docs"
    docs.mkdir()
    writer = PdfWriter()
    for page in PdfReader(laws_dir / "pdf" / FUTURES_LAW).pages[:4]:  # four real pages keep the test quick
        writer.add_page(page)
    writer.write(str(docs / FUTURES_LAW))
    # chunk_size above max_seq_length: capped, so that no chunk is truncated by the model.
    cfg = _cfg(docs, tmp_path / "out", tokenizer=str(minilm_path), chunk_size=160, chunk_overlap=16)
    cfg.max_seq_length = 128
    with caplog.at_level(logging.WARNING):
        out = ingest.run(cfg)
    train, val, stats = _outputs(out)
    tokenizer = load_tokenizer(minilm_path)
    lengths = [len(tokenizer(c["text"])["input_ids"]) for c in train + val]  # with [CLS] and [SEP]
    assert max(lengths) <= 128
    assert max(lengths) >= 100, "chunks should use most of their budget"
    assert any("chunk_size 160 is above max_seq_length 128" in r.getMessage() for r in caplog.records)
    assert stats["chunks"]["effective_chunk_size"] == 126
    assert stats["tokenizer"]["unit"] == "tokens" and stats["tokenizer"]["special_tokens"] == 2
    assert stats["tokens"]["truncated"] == 0 and stats["tokens"]["max_per_chunk_with_specials"] <= 128
    # MiniLM can't read Chinese: most tokens are [UNK], and the user is told so.
    assert stats["tokens"]["unk_rate"] > 0.5
    assert any("can't read this corpus" in w for w in stats["warnings"])
    assert any("can't read this corpus" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------------------------
# Bad input


def _english_pdf(path: Path, text: str = "A text layer that pypdf can read. ") -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.multi_cell(0, 10, text * 20)
    pdf.output(str(path))


def _image_only_pdf(path: Path) -> None:
    from fpdf import FPDF
    from PIL import Image

    pdf = FPDF()
    pdf.add_page()
    pdf.image(Image.new("RGB", (300, 200), "gray"), x=10, y=10, w=150)
    pdf.output(str(path))


def _encrypt(source: Path, target: Path, user_password: str) -> None:
    from pypdf import PdfWriter

    writer = PdfWriter(clone_from=str(source))
    writer.encrypt(user_password=user_password, owner_password="owner-secret")
    writer.write(str(target))


@pytest.fixture
def messy_dir(tmp_path, laws_dir) -> Path:
    """A folder as users have them: one good GBK text, one owner-locked PDF, and one of each bad kind."""
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "sub" / "规章制度.txt").write_bytes("\n".join(ARTICLES).encode("gbk"))
    _english_pdf(tmp_path / "plain.pdf")
    _encrypt(tmp_path / "plain.pdf", docs / "locked.pdf", user_password="open-sesame")
    _encrypt(tmp_path / "plain.pdf", docs / "owner_only.pdf", user_password="")
    data = (laws_dir / "pdf" / FUTURES_LAW).read_bytes()
    (docs / "truncated.pdf").write_bytes(data[: len(data) // 3])
    (docs / "empty.pdf").write_bytes(b"")
    (docs / "empty.txt").write_text("  \n", encoding="utf-8")
    _image_only_pdf(docs / "scan.pdf")
    (docs / "notes.pdf").write_text("这其实是一个文本文件，只是扩展名写成了 PDF。\n" * 3, encoding="utf-8")
    (docs / "report.txt").write_bytes(data[:4000])
    (docs / "table.docx").write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    (docs / ".hidden.txt").write_text("隐藏文件不应被读取。" * 10, encoding="utf-8")
    return docs


def test_bad_files_are_skipped_with_reasons_and_the_rest_proceeds(messy_dir, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        out = ingest.run(_cfg(messy_dir, tmp_path / "out"))
    train, val, stats = _outputs(out)
    reasons = {item["source"]: item["reason"] for item in stats["skipped"]}
    assert reasons == {
        "locked.pdf": "encrypted",
        "truncated.pdf": "corrupt",
        "empty.pdf": "empty",
        "empty.txt": "empty",
        "scan.pdf": "image-only",
        "notes.pdf": "misnamed",
        "report.txt": "misnamed",
        "table.docx": "corrupt",
    }
    messages = {item["source"]: item["message"] for item in stats["skipped"]}
    assert "rename it to .txt" in messages["notes.pdf"] and "rename it to .pdf" in messages["report.txt"]
    assert "OCR" in messages["scan.pdf"] and "password" in messages["locked.pdf"]
    read = {item["source"]: item for item in stats["read"]}
    assert set(read) == {"sub/规章制度.txt", "owner_only.pdf"}, "an owner-password-only PDF opens without one"
    assert read["sub/规章制度.txt"]["encoding"] == "gb18030"
    assert stats["files"] == {"found": 10, "read": 2, "skipped": 8}
    assert stats["skipped_by_reason"]["empty"] == 2
    texts = "\n".join(c["text"] for c in train + val)
    assert "第一条 为了规范公司的组织和行为，保护公司、股东、职工和债权人的合法权益" in texts, "GBK decoded"
    assert "隐藏文件" not in texts
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ingest:")]
    assert len(summary) == 1
    assert "2 file(s) read, 8 skipped" in summary[0] and "encrypted: 1" in summary[0] and "image-only: 1" in summary[0]
    assert "by file: 1 / 1" in summary[0]


def test_unreadable_file_is_skipped(tmp_path, monkeypatch):
    from offline_embft.ingest import loaders

    (tmp_path / "locked.txt").write_text("内容", encoding="utf-8")

    def denied(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setitem(loaders.LOADERS, ".txt", denied)  # root ignores chmod 000, so deny the read itself
    with pytest.raises(loaders.LoadError, match="Permission denied") as info:
        loaders.load(tmp_path / "locked.txt")
    assert info.value.reason is loaders.SkipReason.unreadable


def test_gbk_text_file_is_decoded(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "gbk.txt").write_bytes("\n".join(ARTICLES).encode("gbk"))
    damaged = "\n".join(ARTICLES).encode("utf-8")
    (docs / "utf8_damaged.txt").write_bytes(damaged[:50] + b"\xff" + damaged[50:])
    (docs / "gb18030.txt").write_bytes(
        ("第七条 依照本法设立的有限责任公司，应当在公司名称中标明有限责任公司字样。𠀀" * 3).encode("gb18030")
    )
    out = ingest.run(_cfg(docs, tmp_path / "out", val_ratio=0.0))
    train, val, stats = _outputs(out)
    assert not val
    encodings = {r["source"]: r["encoding"] for r in stats["read"]}
    assert encodings == {
        "gbk.txt": "gb18030",
        "gb18030.txt": "gb18030",
        "utf8_damaged.txt": "utf-8 (damaged bytes replaced)",
    }
    text = "\n".join(c["text"] for c in train)
    assert ARTICLES[1] in text and "𠀀" in text and "\ufffd" not in text


def test_no_readable_document_is_a_one_line_error(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "empty.pdf").write_bytes(b"")
    _image_only_pdf(docs / "scan.pdf")
    with pytest.raises(UserError, match=r"no readable document in .*2 file\(s\) skipped \(empty: 1, image-only: 1\)"):
        ingest.run(_cfg(docs, tmp_path / "out"))
    assert not (tmp_path / "out").exists(), "nothing is written when nothing was read"


def test_cli_exit_code_2_and_one_line_for_user_errors(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "empty.txt").write_bytes(b"")
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", str(docs), "--out", str(tmp_path / "out"), "--tokenizer", ""])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: no readable document")
    assert "Traceback" not in result.output

    missing = runner.invoke(app, ["ingest", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    assert missing.exit_code == 2 and "input directory" in missing.stderr and "not found" in missing.stderr

    _write_text_docs(docs, 1)
    bad_tok = runner.invoke(
        app, ["ingest", str(docs), "--out", str(tmp_path / "out"), "--tokenizer", str(tmp_path / "no-model")]
    )
    assert bad_tok.exit_code == 2 and "tokenizer directory" in bad_tok.stderr
    assert bad_tok.stderr.strip().count("\n") == 0


def test_default_tokenizer_missing_falls_back_to_characters_loudly(tmp_path, caplog):
    _write_text_docs(tmp_path / "docs", 2)
    cfg = load_config(None, [f"dataset_dir={tmp_path / 'Dataset'}", f"models_dir={tmp_path / 'Models'}"]).resolve()
    cfg.ingest.input_dir = str(tmp_path / "docs")
    assert not cfg.ingest.tokenizer_strict and cfg.ingest.tokenizer.endswith("-st")
    with caplog.at_level(logging.WARNING):
        out = ingest.run(cfg.ingest)
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["tokenizer"]["unit"] == "characters" and stats["tokens"] is None
    assert "not found" in stats["tokenizer"]["note"] and stats["warnings"]
    assert any("sized by characters" in r.getMessage() for r in caplog.records)
    assert out == tmp_path / "Dataset" / "chunks"


# ---------------------------------------------------------------------------------------------------------------
# Split, duplicates, atomic output


def test_split_by_file_is_seeded_and_never_leaks(tmp_path):
    _write_text_docs(tmp_path / "docs", 7)
    out = ingest.run(_cfg(tmp_path / "docs", tmp_path / "a", seed=3))
    train, val, stats = _outputs(out)
    train_sources, val_sources = {c["source"] for c in train}, {c["source"] for c in val}
    assert not train_sources & val_sources
    assert len(val_sources) == 2 and len(train_sources) == 5  # round(7 * 0.3)
    assert sorted(stats["split"]["val_files"]) == sorted(val_sources)
    _assert_no_leakage(train, val)
    again = ingest.run(_cfg(tmp_path / "docs", tmp_path / "b", seed=3))
    assert {c["source"] for c in _outputs(again)[1]} == val_sources, "same seed, same split"
    splits = {
        frozenset(c["source"] for c in _outputs(ingest.run(_cfg(tmp_path / "docs", tmp_path / f"s{s}", seed=s)))[1])
        for s in range(4)
    }
    assert len(splits) > 1, "the seed drives the split"


def test_two_files_put_one_in_validation(tmp_path):
    _write_text_docs(tmp_path / "docs", 2)
    train, val, _ = _outputs(ingest.run(_cfg(tmp_path / "docs", tmp_path / "out")))
    assert len({c["source"] for c in train}) == 1 and len({c["source"] for c in val}) == 1


def test_exact_duplicate_chunks_are_dropped_even_across_files(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    text = "\n".join(ARTICLES)
    (docs / "a.txt").write_text(text, encoding="utf-8")
    (docs / "copy_of_a.txt").write_text(text, encoding="utf-8")
    (docs / "b.txt").write_text(text.replace("公司", "企业"), encoding="utf-8")
    train, val, stats = _outputs(ingest.run(_cfg(docs, tmp_path / "out", chunk_size=120, chunk_overlap=0)))
    texts = [c["text"] for c in train + val]
    assert len(texts) == len(set(texts))
    assert stats["chunks"]["dropped_duplicates"] >= 2
    assert "copy_of_a.txt" not in {c["source"] for c in train + val}
    copy = next(r for r in stats["read"] if r["source"] == "copy_of_a.txt")
    assert copy["chunks"] == 0 and copy["split"] == "none"
    _assert_no_leakage(train, val)


def test_failed_write_leaves_previous_output_intact(tmp_path, monkeypatch):
    _write_text_docs(tmp_path / "docs", 3)
    out = ingest.run(_cfg(tmp_path / "docs", tmp_path / "out"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken_row(self):
        raise OSError("disk full")

    (tmp_path / "docs" / "doc0.txt").write_text("第一条 改过的内容，足够长足够长足够长足够长。", encoding="utf-8")
    monkeypatch.setattr(Chunk, "row", broken_row)
    with pytest.raises(OSError, match="disk full"):
        ingest.run(_cfg(tmp_path / "docs", tmp_path / "out"))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, "old output kept whole, no temp files left"


def test_parallel_reading_gives_the_same_result_as_serial(tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        _english_pdf(docs / f"report{i}.pdf", f"Report number {i} has a text layer that pypdf can read. ")
    (docs / "empty.pdf").write_bytes(b"")
    files = documents.find_files(docs)
    serial = documents.read_documents(docs, files, meanwhile=lambda: "unused")
    monkeypatch.setattr(documents, "PARALLEL_MIN_PDF_BYTES", 0)
    if documents._workers(files) < 2:
        pytest.skip("parallel reading needs Linux and two CPUs")
    parallel = documents.read_documents(docs, files, meanwhile=lambda: "done meanwhile")
    assert [d.clean.text for d in parallel[0]] == [d.clean.text for d in serial[0]]
    assert [d.source for d in parallel[0]] == ["report0.pdf", "report1.pdf", "report2.pdf"]
    assert parallel[1] == serial[1] and parallel[1][0]["reason"] == "empty"
    assert serial[2] is None and parallel[2] == "done meanwhile"


def test_holdout_span_cuts_at_paragraphs():
    import random

    text = "\n".join(f"第{i}段内容。" * 3 for i in range(20))
    start, end = chunking.holdout_span(text, 0.3, random.Random(0))
    assert start == 0 or text[start - 1] == "\n"
    assert end == len(text) or text[end - 1] == "\n"
    assert 0.2 < (end - start) / len(text) < 0.4
    assert chunking.holdout_span("一句话", 0.3, random.Random(0)) is None
