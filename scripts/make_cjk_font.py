"""Build offline_embft/fonts/NotoSansCJKsc-subset.otf: the CJK font the report chart falls back to.

Air-gapped servers often have no Chinese font at all, and matplotlib then draws Chinese labels as empty boxes. The
package therefore ships a subset of Noto Sans CJK SC (SIL Open Font License 1.1, see fonts/OFL.txt): printable
ASCII plus every character of GB2312 (6,763 hanzi, CJK punctuation, full-width forms), about 3 MB instead of 16 MB.

Usage (the source font comes from any Noto Sans CJK SC Regular OTF, e.g. the one inside the mplfonts wheel):

    python scripts/make_cjk_font.py /path/to/NotoSansCJKsc-Regular.otf
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fontTools import subset
from fontTools.ttLib import TTFont

OUT = Path(__file__).resolve().parents[1] / "offline_embft" / "fonts" / "NotoSansCJKsc-subset.otf"
FAMILY = "Noto Sans CJK SC Subset"


def gb2312_characters() -> str:
    """Every character GB2312 encodes: symbols (rows 1-9) and hanzi (rows 16-87)."""
    chars = []
    for row in range(0xA1, 0xF8):
        for cell in range(0xA1, 0xFF):
            try:
                chars.append(bytes([row, cell]).decode("gb2312"))
            except UnicodeDecodeError:
                continue
    return "".join(chars)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="NotoSansCJKsc-Regular.otf")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    text = "".join(chr(c) for c in range(0x20, 0x7F)) + gb2312_characters() + "—–…·“”‘’•°×÷±≤≥"
    options = subset.Options()
    options.layout_features = ["kern"]  # horizontal Latin/CJK text needs nothing else
    options.hinting = False
    options.drop_tables += ["VORG", "vhea", "vmtx", "BASE", "DSIG"]
    options.name_IDs = ["*"]
    font = TTFont(args.source)
    subsetter = subset.Subsetter(options)
    subsetter.populate(text=text)
    subsetter.subset(font)
    # A distinct family name: it must not shadow a full Noto Sans CJK SC installed on the system.
    for record in font["name"].names:
        if record.nameID in (1, 4, 16):
            record.string = FAMILY
        elif record.nameID in (3, 6):
            record.string = "NotoSansCJKsc-Subset"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    font.save(args.out)
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.1f} MB, {len(set(text))} characters")


if __name__ == "__main__":
    main()
