"""The ``ingest`` section: documents → clean Chinese text → token-aware chunks."""

from __future__ import annotations

from dataclasses import dataclass

from offline_embft.core.config.fields import check, documented

# ingest.chunking's choices (the CLI's --chunking offers these).
CHUNKINGS = ("sentences", "units", "each-unit")


@dataclass
class IngestConfig:
    """Documents → clean Chinese text → token-aware chunks, split train/val by file."""

    input_dir: str = documented("Directory of PDF/DOCX/HTML/MD/TXT documents (searched recursively).", "")
    out_dir: str = documented("Output directory for train.jsonl, val.jsonl and stats.json.", "")
    tokenizer: str = documented("Embedding model directory whose tokenizer sizes the chunks (empty: characters).", "")
    tokenizer_strict: bool = documented(
        "Fail when the tokenizer directory is missing (set for an explicit tokenizer); otherwise size by characters.",
        False,
    )
    chunk_size: int = documented("Chunk size in tokens of the tokenizer (characters without one).", 300)
    chunk_overlap: int = documented("Overlap between consecutive chunks, in the same unit.", 30)
    chunking: str = documented(
        "each-unit: cut at the document's own units (第X章/节/条, 1.2.3 and Markdown/Word/HTML headings), one unit "
        "per chunk (fragments under 1/8 of chunk_size take in the next), units longer than chunk_size split by "
        "sentences with chunk_overlap; text without units is cut by sentences alone. units: the same, neighbours of "
        "one section packed up to chunk_size. sentences: pack sentences up to chunk_size (LlamaIndex "
        "SentenceSplitter).",
        "each-unit",
    )
    max_seq_length: int = documented(
        "The embedding model's max_seq_length; longer chunks are counted as truncated.", 512
    )
    val_ratio: float = documented("Share of files (or of chunks, for a single file) held out for validation.", 0.3)
    seed: int = documented("Seed of the train/val split.", 42)
    min_chunk_chars: int = documented("Chunks with fewer characters than this are dropped as noise.", 20)
    unk_warn_rate: float = documented(
        "Warn loudly when the tokenizer maps more than this share of tokens to UNK.", 0.05
    )

    def __post_init__(self) -> None:
        check(self.chunk_size > 0, f"ingest.chunk_size must be positive, got {self.chunk_size}")
        check(
            0 <= self.chunk_overlap < self.chunk_size,
            f"ingest.chunk_overlap must be in [0, chunk_size), got {self.chunk_overlap}",
        )
        check(0.0 <= self.val_ratio < 1.0, f"ingest.val_ratio must be in [0, 1), got {self.val_ratio}")
        check(
            self.chunking in CHUNKINGS,
            f"ingest.chunking must be one of {', '.join(CHUNKINGS)}, got {self.chunking!r}",
        )
