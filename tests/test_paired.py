"""The paired bootstrap that tells a loss from val noise (bgremoval.scoring.paired)."""

from __future__ import annotations

import numpy as np
import pytest

from bgremoval.scoring.paired import paired_loss, photo_losses


def test_photo_losses_are_positive_when_the_candidate_is_worse_on_every_score():
    reference = {"iou": [0.9, 0.8], "boundary_f": [0.7, 0.6], "mae": [0.01, 0.02]}
    candidate = {"iou": [0.8, 0.8], "boundary_f": [0.6, 0.7], "mae": [0.03, 0.02]}
    assert photo_losses(["iou"], reference, candidate) == pytest.approx([0.1, 0.0])
    assert photo_losses(["mae"], reference, candidate) == pytest.approx([0.02, 0.0])  # lower MAE is better
    assert photo_losses(["iou", "boundary_f"], reference, candidate) == pytest.approx([0.1, -0.05])
    with pytest.raises(ValueError, match="max_f: paired losses compare per-photo scores"):
        photo_losses(["max_f"], {"max_f": [1.0]}, {"max_f": [1.0]})
    with pytest.raises(ValueError, match="same photos on both sides"):
        photo_losses(["iou"], {"iou": [0.9, 0.8]}, {"iou": [0.9]})


def test_the_interval_matches_the_normal_one_for_many_photos_and_is_repeatable():
    losses = np.random.default_rng(1).normal(0.004, 0.02, size=400)
    got = paired_loss(losses, confidence=0.9, resamples=4000, seed=7)
    half = 1.645 * losses.std(ddof=1) / np.sqrt(losses.size)  # the textbook interval, computed apart
    assert got.mean == pytest.approx(losses.mean())
    assert got.lower == pytest.approx(losses.mean() - half, abs=0.15 * half)
    assert got.upper == pytest.approx(losses.mean() + half, abs=0.15 * half)
    assert paired_loss(losses, confidence=0.9, resamples=4000, seed=7) == got and got.n == 400
    wider = paired_loss(losses, confidence=0.99, resamples=4000, seed=7)
    assert wider.lower < got.lower and wider.upper > got.upper


def test_one_photo_or_equal_losses_have_no_spread_and_bad_settings_are_named():
    assert paired_loss(np.array([0.25]), confidence=0.9, resamples=50, seed=0).upper == 0.25
    flat = paired_loss(np.full(10, -0.01), confidence=0.9, resamples=50, seed=0)
    assert flat.lower == pytest.approx(-0.01) and flat.upper == pytest.approx(-0.01)
    for bad, match in (({"confidence": 1.0}, "confidence"), ({"resamples": 0}, "resamples")):
        with pytest.raises(ValueError, match=match):
            paired_loss(np.zeros(3), **{"confidence": 0.9, "resamples": 10, "seed": 0, **bad})
    with pytest.raises(ValueError, match="one value per photo"):
        paired_loss(np.zeros(0), confidence=0.9, resamples=10, seed=0)
