"""Teach a model the characters of the user's corpus that its tokenizer maps to [UNK].

all-MiniLM-L6-v2 and bge-small-en split Chinese text into single characters, and about two thirds of those
characters are not in their vocabulary: every one of them becomes the same [UNK] token, so 公司 and 保险 look alike
to the model and no amount of fine-tuning can tell them apart. Adding those characters as tokens and growing the
embedding matrix gives each its own trainable row.

Only characters that map to [UNK] *on their own* are added: a WordPiece tokenizer turns a whole word into [UNK] when
one character of it is unknown, and adding the word's known letters would split every other word that uses them.

New rows are drawn from a normal distribution with the mean and covariance of the existing rows (Hewitt, "Initializing
new word embeddings", 2021): each new character gets its own vector that looks like a real token to the layers above,
so the model can match characters between a query and a passage before any training. Measured on the statute
benchmark (docs/train.md), untrained: copying the [UNK] row keeps the base model's ndcg@10 (0.19, all new characters
still look alike), the plain mean collapses it (0.06), the sampled rows lift it to ~0.33; and fine-tuning moves rows
by about lr per step, far too little to pull hundreds of identical rows apart in a few epochs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from offline_embft.core.tokenizer_check import measure

logger = logging.getLogger(__name__)

# How new embedding rows start: "sample" (the default, see above), "unk" (a copy of the [UNK] row: the extended model
# computes exactly what the base model did) or "mean" (the mean row, transformers' mean_resizing).
INIT_CHOICES = ("sample", "unk", "mean")

# extend_vocab=auto adds tokens only when at least this share of the corpus's tokens are [UNK]: a handful of rare
# symbols in an otherwise covered corpus (BCE, XLM-R) is not worth changing the model's shape for.
AUTO_MIN_UNK_RATE = 0.001


@dataclass
class VocabExtension:
    """What vocabulary extension did, for the training log and ``vocab_extension.json`` beside the model."""

    mode: str = "auto"
    init: str = "sample"
    texts: int = 0
    tokens_added: int = 0
    vocab_size_before: int = 0
    vocab_size_after: int = 0
    unk_rate_before: float = 0.0
    unk_rate_after: float = 0.0
    added: list[str] = field(default_factory=list)
    skipped_reason: str = ""
    # choose_draw: the validation score of each draw of the new rows (draw 0: the one extend_vocabulary made), and
    # the draw kept.
    draw_scores: list[float] = field(default_factory=list)
    draw_kept: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["unk_rate_before"] = round(self.unk_rate_before, 6)
        data["unk_rate_after"] = round(self.unk_rate_after, 6)
        return data


def unk_characters(tokenizer: Any, texts: Iterable[str]) -> tuple[list[str], float]:
    """Characters of ``texts`` that the tokenizer maps to [UNK] on their own, most frequent first, and the UNK rate.

    Returns:
        (characters, unk_rate): the characters sorted by descending frequency (ties by code point, so the result and
        therefore the new token ids are reproducible), and the share of tokens that are [UNK].
    """
    coverage = measure(tokenizer, texts)
    unk_id = tokenizer.unk_token_id
    chars = [
        char
        for char, _ in sorted(coverage.unk_chars.items(), key=lambda item: (-item[1], item[0]))
        if tokenizer(char, add_special_tokens=False)["input_ids"] == [unk_id]
    ]
    return chars, coverage.unk_rate


def extend_vocabulary(model: Any, texts: list[str], mode: str = "auto", init: str = "sample") -> VocabExtension:
    """Add the corpus characters the model's tokenizer maps to [UNK] as new tokens, in place.

    Grows the input embedding matrix and initialises the new rows (``init``, see :data:`INIT_CHOICES`). The extended
    tokenizer is the model's own, so ``model.save(...)`` and every trainer checkpoint carry it. The added tokens and
    their order depend only on the corpus and the tokenizer, so a resumed run rebuilds exactly the shapes its
    checkpoint has; the sampled rows depend on torch's seed.

    Args:
        model: a SentenceTransformer whose first module is a Hugging Face Transformer.
        texts: the corpus (queries and passages) the model will be trained and used on.
        mode: "auto" (extend when the UNK rate is at least :data:`AUTO_MIN_UNK_RATE`), "on" or "off".
        init: how new rows start, one of :data:`INIT_CHOICES`.

    Returns:
        What was done; ``tokens_added`` is 0 when nothing changed.
    """
    if init not in INIT_CHOICES:
        raise ValueError(f"init must be one of {INIT_CHOICES}, got {init!r}")
    tokenizer = model.tokenizer
    report = VocabExtension(mode=mode, init=init, texts=len(texts), vocab_size_before=len(tokenizer))
    report.vocab_size_after = report.vocab_size_before
    if mode == "off":
        report.skipped_reason = "extend_vocab=off"
        return report
    if tokenizer.unk_token_id is None:
        report.skipped_reason = "the tokenizer has no [UNK] token (byte-level: every character is covered)"
        return report
    if not getattr(tokenizer, "is_fast", False):
        report.skipped_reason = "a slow tokenizer gives no character offsets; convert the model to a fast tokenizer"
        logger.warning("vocabulary not extended: %s", report.skipped_reason)
        return report

    chars, report.unk_rate_before = unk_characters(tokenizer, texts)
    report.unk_rate_after = report.unk_rate_before
    if not chars:
        report.skipped_reason = "no corpus character maps to [UNK]"
        return report
    if mode == "auto" and report.unk_rate_before < AUTO_MIN_UNK_RATE:
        report.skipped_reason = f"UNK rate {report.unk_rate_before:.4%} is below {AUTO_MIN_UNK_RATE:.1%} (auto)"
        logger.info("vocabulary kept: %s", report.skipped_reason)
        return report

    from tokenizers import AddedToken

    # normalized=False matches the raw character: a lower-casing / accent-stripping normalizer would otherwise
    # rewrite some symbols (Ⅲ → ⅲ) before the added-token lookup and they would stay [UNK].
    known = len(tokenizer)
    added = tokenizer.add_tokens([AddedToken(char, normalized=False) for char in chars])
    if added != len(chars):
        logger.warning("the tokenizer accepted %d of %d new characters", added, len(chars))
    _grow_embeddings(model[0].auto_model, known, len(tokenizer), tokenizer.unk_token_id, init)

    report.added = chars
    report.tokens_added = added
    report.vocab_size_after = len(tokenizer)
    report.unk_rate_after = measure(tokenizer, texts).unk_rate
    logger.info(
        "vocabulary extended: %d characters added (%d → %d tokens), UNK rate %.2f%% → %.2f%%",
        added,
        report.vocab_size_before,
        report.vocab_size_after,
        100 * report.unk_rate_before,
        100 * report.unk_rate_after,
    )
    return report


def _grow_embeddings(backbone: Any, known: int, total: int, unk_id: int, init: str) -> None:
    """Make rows ``known..total-1`` of the input embeddings exist and fill them per ``init``."""
    if backbone.get_input_embeddings().weight.shape[0] < total:
        backbone.resize_token_embeddings(total, mean_resizing=False)
    # Some checkpoints ship spare rows past the tokenizer (padded to a multiple of 8 or 64): those get reused.
    weight = backbone.get_input_embeddings().weight  # (vocab rows >= total, hidden)
    with torch.no_grad():
        base = weight[:known].float()  # (known, hidden): the rows trained with the model
        count = total - known
        if init == "unk":
            new = base[unk_id].expand(count, -1)  # (count, hidden)
        elif init == "mean":
            new = base.mean(dim=0).expand(count, -1)  # (count, hidden)
        else:
            new = _row_distribution(base).sample((count,))  # (count, hidden), torch's global generator
        weight[known:total] = new.to(weight.dtype)


def _row_distribution(base: torch.Tensor) -> torch.distributions.MultivariateNormal:
    """The normal with the mean and covariance of the rows ``base`` (known, hidden)."""
    centered = base - base.mean(dim=0)  # (known, hidden)
    covariance = centered.T @ centered / base.shape[0]  # (hidden, hidden)
    # A small ridge keeps the covariance positive definite for MultivariateNormal.
    covariance += 1e-6 * torch.eye(covariance.shape[0])
    return torch.distributions.MultivariateNormal(base.mean(dim=0), covariance_matrix=covariance)


def choose_draw(model: Any, report: VocabExtension, score: Callable[[Any], float], draws: int, seed: int) -> None:
    """Draw the new rows ``draws`` times and keep the draw the model, untrained, scores best with, in place.

    Which random rows the new characters start from decides much of what training reaches, because training moves a
    row by about lr per step: on the statute benchmark (docs/quality.md) one draw of the rows gave 0.708–0.730 ndcg@10
    over three data orders, other draws 0.655–0.691, and the draws' untrained validation scores ranked them in the
    same order. Scoring a draw costs one encoding of the validation set, no training.

    Args:
        model: the SentenceTransformer :func:`extend_vocabulary` extended with ``report`` (draw 0: its rows).
        report: that extension's report; gets ``draw_scores`` and ``draw_kept``.
        score: the validation score of a model (higher is better), e.g. the evaluator's ndcg@10.
        draws: how many draws to compare (1: keep the rows as they are).
        seed: draw k > 0 is sampled from a generator seeded with ``seed * 1000 + k`` (reproducible).
    """
    if draws <= 1 or not report.tokens_added or report.init != "sample":
        return
    weight = model[0].auto_model.get_input_embeddings().weight
    known, total = report.vocab_size_before, report.vocab_size_after
    # The distribution once (a pass over every known row: 250k of them for XLM-R), not once per draw.
    dist = _row_distribution(weight[:known].detach().float())
    best_rows = weight[known:total].detach().clone()
    report.draw_scores, report.draw_kept = [score(model)], 0
    for draw in range(1, draws):
        generator = torch.Generator().manual_seed(seed * 1000 + draw)
        noise = torch.randn((total - known, dist.loc.shape[0]), generator=generator)  # (count, hidden)
        rows = dist.loc + noise @ dist.scale_tril.T  # what dist.sample draws, from this generator
        with torch.no_grad():
            weight[known:total] = rows.to(weight.dtype)
        report.draw_scores.append(score(model))
        if report.draw_scores[-1] > report.draw_scores[report.draw_kept]:
            report.draw_kept, best_rows = draw, weight[known:total].detach().clone()
    with torch.no_grad():
        weight[known:total] = best_rows
    logger.info(
        "new rows: kept draw %d of %d (untrained validation score %.4f; the draws ranged %.4f-%.4f)",
        report.draw_kept,
        draws,
        report.draw_scores[report.draw_kept],
        min(report.draw_scores),
        max(report.draw_scores),
    )
