"""Which characters are Chinese characters (Han ideographs): one definition for every stage that asks.

Ingest's cleaning (spaces between CJK characters), its structure detection (a heading holds a letter or an
ideograph) and generate's language check (a question in Chinese) all ask the same question, and once answered it
three different ways.
"""

from __future__ import annotations

import re

# A regex character-class body: CJK Unified Ideographs and Extension A, the CJK Compatibility Ideographs, and
# Extensions B to G in the supplementary planes. Not CJK punctuation, and not the Yijing hexagram symbols that sit
# between Extension A and the unified block.
HAN_IDEOGRAPHS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
HAN_RE = re.compile(f"[{HAN_IDEOGRAPHS}]")
