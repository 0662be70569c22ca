"""Weight-space ensembling of the fine-tuned and the base model (WiSE-FT, LM-Cocktail).

``θ = α·θ_fine-tuned + (1 − α)·θ_base``, parameter by parameter, with α chosen by measurement. Fine-tuning on a
few hundred pairs of one domain can make a model worse at what it knew; a point on the straight line between the two
weights often keeps most of the gain and much of the base model's generality (Wortsman et al. 2022, "Robust
fine-tuning of zero-shot models"; Xiao et al. 2023, "LM-Cocktail"). α = 1 is the fine-tuned model itself, so the
choice on validation alone is never worse than plain fine-tuning there.

With general retrieval sets (:func:`choose_merge`), α is the one with the best domain validation score among those
that lose at most a margin of ndcg@10 on the general sets against the base model (α = 0 always qualifies), and the
choice reports both numbers: how much of the domain gain it kept, and what it cost on general text.

Vocabulary extension (:mod:`offline_embft.train.vocab`) adds embedding rows the base model does not have: those rows
come
from the fine-tuned model unchanged (the base model has nothing to mix them with); the shared rows are mixed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

ALPHAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def interpolate(base: Mapping[str, Any], tuned: Mapping[str, Any], alpha: float) -> dict[str, Any]:
    """The state dict ``alpha * tuned + (1 - alpha) * base`` (tensors of the fine-tuned model's shapes).

    Floating-point tensors of equal shape are mixed; a tensor that grew along its first dimension (embedding rows
    added by vocabulary extension) mixes its shared rows and keeps the new rows from ``tuned``; everything else
    (integer buffers, parameters the base lacks) comes from ``tuned``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    mixed: dict[str, Any] = {}
    for name, new in tuned.items():
        old = base.get(name)
        if old is None or not new.is_floating_point() or old.dim() != new.dim():
            mixed[name] = new.clone()
        elif old.shape == new.shape:
            mixed[name] = alpha * new + (1.0 - alpha) * old.to(new.dtype)
        elif old.shape[1:] == new.shape[1:] and old.shape[0] < new.shape[0]:
            rows = old.shape[0]
            out = new.clone()
            out[:rows] = alpha * new[:rows] + (1.0 - alpha) * old.to(new.dtype)
            mixed[name] = out
        else:
            raise ValueError(f"cannot mix {name}: base shape {tuple(old.shape)}, fine-tuned {tuple(new.shape)}")
    return mixed


@dataclass
class MergeChoice:
    """The α a merge chose and what it traded: the domain validation score and (with general sets) the mean general
    score at every α tried.

    Attributes:
        alpha: The chosen mix (1.0: the fine-tuned model, 0.0: the base model).
        domain: α → domain validation score (ndcg@10).
        general: α → mean general-set score (ndcg@10); empty when no general set was given.
        margin: The general score the merge was allowed to give up against the base model (α = 0).
    """

    alpha: float
    domain: dict[float, float]
    general: dict[float, float] = field(default_factory=dict)
    margin: float = 0.0

    @property
    def gain_kept(self) -> float | None:
        """Share of fine-tuning's domain gain the chosen α keeps (None: fine-tuning gained nothing on the domain)."""
        gain = self.domain[1.0] - self.domain[0.0]
        return (self.domain[self.alpha] - self.domain[0.0]) / gain if gain > 0 else None

    @property
    def within_margin(self) -> bool:
        """The chosen α loses at most the margin on the general sets (True without general sets)."""
        return not self.general or self.general[0.0] - self.general[self.alpha] <= self.margin + 1e-12

    def describe(self) -> str:
        """One line: the α, the domain score kept, and what it cost on the general sets (both numbers)."""
        d = self.domain
        kept = self.gain_kept
        text = (
            f"weight ensemble α={self.alpha:g}: domain validation ndcg@10 {d[self.alpha]:.4f} (base {d[0.0]:.4f}, "
            f"fine-tuned {d[1.0]:.4f}"
            + (
                "; fine-tuning gained nothing here)"
                if kept is None
                else f"; {d[self.alpha] - d[1.0]:+.4f} over the fine-tuned model itself)"
                if kept > 1
                else f"; {kept:.0%} of the gain kept)"
            )
        )
        if not self.general:
            return text
        g = self.general
        text += (
            f"; general ndcg@10 {g[self.alpha]:.4f} (base {g[0.0]:.4f}, fine-tuned {g[1.0]:.4f}; "
            f"{g[self.alpha] - g[0.0]:+.4f} against the base, margin {self.margin:g})"
        )
        if kept is not None and self.alpha == 0.0:
            text += ": no mix kept any of the domain gain within the margin, so the base model is saved"
        return text

    def to_dict(self) -> dict[str, Any]:
        """train_metrics.json's ``weight_ensemble`` entry."""
        out: dict[str, Any] = {
            "alpha": self.alpha,
            "val_ndcg@10_by_alpha": {f"{a:g}": round(v, 6) for a, v in self.domain.items()},
        }
        if self.general:
            out.update(
                {
                    "general_ndcg@10_by_alpha": {f"{a:g}": round(v, 6) for a, v in self.general.items()},
                    "retention_margin": self.margin,
                    "within_margin": self.within_margin,
                    "domain_gain_kept": None if self.gain_kept is None else round(self.gain_kept, 4),
                    "trade_off": self.describe(),
                }
            )
        return out


def choose_merge(
    model: Any,
    base_state: Mapping[str, Any],
    domain_score: Callable[[Any], float],
    general_score: Callable[[Any], float] | None = None,
    margin: float = 0.02,
    alphas: Sequence[float] = ALPHAS,
) -> MergeChoice:
    """Try each α on ``model`` (the fine-tuned model, changed in place); keep the best domain score among the αs that
    lose at most ``margin`` of the general score against the base model (α = 0, always allowed).

    Without ``general_score`` the best domain score wins (WiSE-FT on validation alone).

    Args:
        model: The fine-tuned SentenceTransformer; on return it holds the chosen α's weights.
        base_state: The base model's state dict.
        domain_score: Validation score of a model on the user's domain (higher is better), e.g. ndcg@10.
        general_score: Score of a model on the general sets (e.g. their mean ndcg@10), or None.
        margin: How much of the base model's general score the merge may give up.
        alphas: Candidates; 0.0 and 1.0 are always tried (the base model and plain fine-tuning).

    Returns:
        The choice, with both scores at every α. Ties go to the larger α (closer to what training chose).
    """
    import torch

    tuned = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    domain: dict[float, float] = {}
    general: dict[float, float] = {}
    for alpha in sorted({*alphas, 0.0, 1.0}):
        with torch.no_grad():
            model.load_state_dict(interpolate(base_state, tuned, alpha))
        domain[alpha] = float(domain_score(model))
        if general_score is not None:
            general[alpha] = float(general_score(model))
        logger.info(
            "weight ensemble α=%.2f: validation score %.4f%s",
            alpha,
            domain[alpha],
            f", general score {general[alpha]:.4f}" if general else "",
        )
    allowed = [a for a in domain if not general or general[0.0] - general[a] <= margin + 1e-12]
    best = max(allowed, key=lambda a: (domain[a], a))
    with torch.no_grad():
        model.load_state_dict(interpolate(base_state, tuned, best))
    return MergeChoice(best, domain, general, margin if general else 0.0)


def choose_alpha(
    model: Any,
    base_state: Mapping[str, Any],
    score: Callable[[Any], float],
    alphas: Sequence[float] = ALPHAS,
) -> tuple[float, dict[float, float]]:
    """Try each α on ``model`` (the fine-tuned model, changed in place), keep the best by ``score``
    (:func:`choose_merge` without general sets).

    Returns:
        (chosen α, score per α). Ties go to the larger α (closer to what training chose).
    """
    choice = choose_merge(model, base_state, score, alphas=alphas)
    return choice.alpha, choice.domain
