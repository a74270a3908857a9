"""How much one set-up loses against another on the same photos, and how sure a small val split can be of it:
a paired bootstrap over the photos (each resample draws photos; a photo's two scores go together)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bgremoval.scoring.metrics import HIGHER_IS_BETTER

PER_IMAGE = ("iou", "dice", "boundary_f", "mae")  # the scores every photo has on its own (max F is a dataset's)


@dataclass(frozen=True)
class PairedLoss:
    """A candidate's mean loss against a reference over n photos (positive: worse) and its bootstrap interval."""

    mean: float
    lower: float
    upper: float
    n: int


def photo_losses(metrics: Sequence[str], reference: dict[str, Sequence[float]],
                 candidate: dict[str, Sequence[float]]) -> np.ndarray:
    """Per photo, the candidate's loss against the reference averaged over `metrics` (each per-photo score
    turned so that positive is worse: MAE up, IoU down)."""
    unknown = [m for m in metrics if m not in PER_IMAGE]
    if not metrics or unknown:
        raise ValueError(f"{', '.join(unknown) or 'no score'}: paired losses compare per-photo scores, "
                         f"out of {', '.join(PER_IMAGE)}")
    lengths = {len(reference[m]) for m in metrics} | {len(candidate[m]) for m in metrics}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError("paired scores need the same photos on both sides, at least one; "
                         f"got lengths {sorted(lengths)}")
    return np.mean([(1.0 if HIGHER_IS_BETTER[m] else -1.0)
                    * (np.asarray(reference[m], np.float64) - np.asarray(candidate[m], np.float64)) for m in metrics],
                   axis=0)


def paired_loss(losses: np.ndarray, *, confidence: float, resamples: int, seed: int) -> PairedLoss:
    """The mean of per-photo losses and the two-sided interval at `confidence` of `resamples` bootstrap means
    (e.g. 0.9: their 5th and 95th percentiles; the upper end is then a one-sided 95 % bound)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie between 0 and 1; got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1; got {resamples}")
    losses = np.asarray(losses, np.float64)
    if losses.ndim != 1 or losses.size == 0:
        raise ValueError(f"paired losses need one value per photo, at least one; got shape {losses.shape}")
    means = losses[np.random.default_rng(seed).integers(0, losses.size, size=(resamples, losses.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    return PairedLoss(mean=float(losses.mean()), lower=float(np.quantile(means, tail)),
                      upper=float(np.quantile(means, 1 - tail)), n=int(losses.size))
