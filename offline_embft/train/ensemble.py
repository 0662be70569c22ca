"""Weight-space ensembling of the fine-tuned and the base model (WiSE-FT, LM-Cocktail).

``θ = α·θ_fine-tuned + (1 − α)·θ_base``, parameter by parameter, with α chosen on the validation set. Fine-tuning on a
few hundred pairs of one domain can make a model worse at what it knew; a point on the straight line between the two
weights often keeps most of the gain and much of the base model's generality (Wortsman et al. 2022, "Robust
fine-tuning of zero-shot models"; Xiao et al. 2023, "LM-Cocktail"). α = 1 is the fine-tuned model itself, so the
choice on validation is never worse than plain fine-tuning there.

Vocabulary extension (:mod:`offline_embft.train.vocab`) adds embedding rows the base model does not have: those rows
come
from the fine-tuned model unchanged (the base model has nothing to mix them with); the shared rows are mixed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
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


def choose_alpha(
    model: Any,
    base_state: Mapping[str, Any],
    score: Callable[[Any], float],
    alphas: Sequence[float] = ALPHAS,
) -> tuple[float, dict[float, float]]:
    """Try each α on ``model`` (the fine-tuned model, changed in place), keep the best by ``score``.

    Args:
        model: The fine-tuned SentenceTransformer; on return it holds the chosen α's weights.
        base_state: The base model's state dict.
        score: Validation score of a model (higher is better), e.g. ndcg@10 of an InformationRetrievalEvaluator.
        alphas: Candidates; 1.0 is always tried (plain fine-tuning).

    Returns:
        (chosen α, score per α). Ties go to the larger α (closer to what training chose).
    """
    import torch

    tuned = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    scores: dict[float, float] = {}
    for alpha in sorted({*alphas, 1.0}):
        with torch.no_grad():
            model.load_state_dict(interpolate(base_state, tuned, alpha))
        scores[alpha] = float(score(model))
        logger.info("weight ensemble α=%.2f: validation score %.4f", alpha, scores[alpha])
    best = max(scores, key=lambda a: (scores[a], a))
    with torch.no_grad():
        model.load_state_dict(interpolate(base_state, tuned, best))
    return best, scores
