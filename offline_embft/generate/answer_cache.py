"""Every LLM answer on disk, so a killed generate run resumes with nothing lost and nothing generated twice.

The cache is an append-only JSONL file: one line per answer, keyed by a hash of (model, prompt, sampling settings,
chunk id). Each batch is appended, flushed and fsynced as soon as the engine returns it, so a crash loses at most
the batch in flight. A line torn by a crash mid-write is cut off when the cache is opened again. The prompt in the
key holds the chunk text and the template, so re-chunked text or an edited prompt never reuses a stale answer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class AnswerCache:
    """An append-only, crash-safe answer store (use as a context manager, or call :meth:`close`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.hits = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._answers: dict[str, str] = {}
        self._load()
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  (kept open for the whole run)

    def _load(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            # A crash mid-write leaves a partial last line; cut it off so the next append starts on a fresh line.
            logger.warning("answer cache %s: dropping a torn last line (%d bytes)", self.path, len(data) - end)
            with open(self.path, "r+b") as handle:
                handle.truncate(end)
            data = data[:end]
        bad = 0
        for line in data.decode("utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                self._answers[record["key"]] = record["answer"]
            except (json.JSONDecodeError, KeyError, TypeError):
                bad += 1
        if bad:
            logger.warning("answer cache %s: skipped %d unreadable lines", self.path, bad)
        if self._answers:
            logger.info("answer cache %s: %d answers from earlier runs", self.path, len(self._answers))

    @staticmethod
    def key(model: str, prompt: str, sampling: dict[str, Any], chunk_id: str) -> str:
        """The cache key of one answer."""
        payload = json.dumps([model, prompt, sampling, chunk_id], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def get(self, key: str) -> str | None:
        """The cached answer for ``key`` (counted as a hit), or None."""
        answer = self._answers.get(key)
        if answer is not None:
            self.hits += 1
        return answer

    def __contains__(self, key: str) -> bool:
        return key in self._answers

    def __len__(self) -> int:
        return len(self._answers)

    def put_many(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records (each with ``key`` and ``answer``) and force them to disk before returning."""
        lines = []
        for record in records:
            self._answers[record["key"]] = record["answer"]
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        if not lines:
            return
        self._handle.write("".join(lines))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
