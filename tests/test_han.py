"""One answer to "is this a Chinese character?" (offline_embft.core.han), asked by ingest's cleaning, its heading
detection and generate's language check, which used to answer it three different ways."""

from __future__ import annotations

from offline_embft.core.han import HAN_RE
from offline_embft.generate import questions
from offline_embft.ingest import clean, structure

RARE = "\U00020000\U0002a6a5"  # two Extension B ideographs (outside the Basic Multilingual Plane)
COMPAT = "\uf900"  # 豈, a CJK compatibility ideograph
HEXAGRAMS = "\u4dc0\u4dc1"  # ䷀䷁: Yijing symbols, between Extension A and the unified block, not characters


def test_han_means_the_ideographs_of_every_plane_and_nothing_else():
    for char in ("中", "\u3400", RARE[0], RARE[1], COMPAT):
        assert HAN_RE.fullmatch(char), hex(ord(char))
    for char in ("。", "，", "Ａ", "A", "1", HEXAGRAMS[0], "ー"):
        assert not HAN_RE.search(char), hex(ord(char))


def test_cleaning_headings_and_the_language_check_agree():
    # Cleaning: a space between two ideographs is an extraction artefact, rare ones included.
    assert clean.tidy_line(f"{RARE[0]} {RARE[1]}") == RARE
    # Headings: "4.1 TITLE" needs a letter or an ideograph in its title; symbols are neither.
    assert structure.heading_level(f"4.1 {RARE}") == structure.heading_level(f"4.1 {COMPAT}") == 8.0
    assert structure.heading_level(f"4.1 {HEXAGRAMS}") is None
    # The language check counts the same characters: a question in rare ones is Chinese (it used to count none).
    assert questions.language(f"{RARE}{RARE}？") == "zh"
    assert questions.language(f"{HEXAGRAMS} what is it?") == "other"
