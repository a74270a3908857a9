"""Evaluation metrics against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from bgremoval.scoring.metrics import (
    HEADLINE,
    HIGHER_IS_BETTER,
    boundary_f,
    f_measure,
    iou_dice,
    pr_curve,
    precision_recall,
    score_image,
    summarise,
)

# Levels 200, 50 / 150, 10 (exact multiples of 1/255); the top row is foreground.
PRED = np.array([[200, 50], [150, 10]]) / 255
GT = np.array([[1, 1], [0, 0]])


def test_mae_iou_dice_by_hand():
    s = score_image(PRED, GT)
    assert s.mae == pytest.approx((55 + 205 + 150 + 10) / 255 / 4)
    # at 0.5: predicted {200, 150}; true {200, 50}: TP 1, FP 1, FN 1
    assert (s.iou, s.dice) == (pytest.approx(1 / 3), pytest.approx(0.5))


def test_precision_recall_over_thresholds_by_hand():
    p, r = precision_recall(PRED, GT)
    assert (p[0], r[0]) == (pytest.approx(0.5), pytest.approx(1.0))      # everything predicted
    assert (p[40], r[40]) == (pytest.approx(2 / 3), pytest.approx(1.0))  # {200, 150, 50}
    assert (p[100], r[100]) == (pytest.approx(0.5), pytest.approx(0.5))  # {200, 150}
    assert (p[160], r[160]) == (pytest.approx(1.0), pytest.approx(0.5))  # {200}
    assert (p[201], r[201]) == (0.0, 0.0)                                # nothing


def test_max_f_with_beta2_0_3_by_hand():
    # best threshold keeps only level 200: P = 1, R = 0.5 -> 1.3 * 0.5 / (0.3 + 0.5) = 0.8125
    assert summarise([score_image(PRED, GT)])["max_f"] == pytest.approx(0.8125, abs=1e-6)


def test_max_f_averages_precision_and_recall_over_images_before_f():
    rng = np.random.default_rng(0)
    preds = [rng.random((8, 8)) for _ in range(3)]
    gts = [rng.random((8, 8)) > 0.6 for _ in range(3)]
    scores = [score_image(p, g) for p, g in zip(preds, gts)]
    curves = [precision_recall(p, g) for p, g in zip(preds, gts)]
    want = f_measure(np.mean([c[0] for c in curves], 0), np.mean([c[1] for c in curves], 0)).max()
    assert summarise(scores)["max_f"] == pytest.approx(want)
    assert summarise(scores)["iou"] == pytest.approx(np.mean([s.iou for s in scores]))


def test_empty_prediction_of_empty_truth_is_perfect():
    assert iou_dice(np.zeros((4, 4)), np.zeros((4, 4))) == (1.0, 1.0)
    assert boundary_f(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0


def test_boundary_f_tolerates_small_shifts_only():
    gt = np.zeros((100, 100))
    gt[30:70, 30:70] = 1
    assert boundary_f(gt, gt) == pytest.approx(1.0)
    assert boundary_f(np.roll(gt, 1, axis=1), gt) == pytest.approx(1.0)  # within 2 px (0.008 x diagonal)
    assert boundary_f(np.roll(gt, 10, axis=1), gt) < 0.6
    far = np.zeros((100, 100))
    far[0:5, 0:5] = 1
    assert boundary_f(far, gt) == 0.0


def test_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in size"):
        score_image(np.zeros((4, 5)), np.zeros((5, 4)))


def test_no_images_is_an_error_not_a_zero_score():
    with pytest.raises(ValueError, match="no images"):
        summarise([])


def test_each_metric_direction_ranks_a_perfect_prediction_above_a_poor_one():
    """HIGHER_IS_BETTER covers every summary metric and says which way each improves; HEADLINE is a subset."""
    gt = np.zeros((20, 20))
    gt[5:15, 5:15] = 1
    poor = np.roll(gt, 6, axis=1) * 0.8 + 0.1
    perfect, bad = summarise([score_image(gt, gt)]), summarise([score_image(poor, gt)])
    assert set(HIGHER_IS_BETTER) == set(perfect)
    assert set(HEADLINE) <= set(HIGHER_IS_BETTER) and len(set(HEADLINE)) == len(HEADLINE)
    for name, higher in HIGHER_IS_BETTER.items():
        assert (perfect[name] > bad[name]) == higher, name


def test_pr_curve_is_the_image_averaged_curve_one_row_per_level():
    scores = [score_image(PRED, GT), score_image(GT.astype(float), GT)]
    rows = pr_curve(scores)
    assert len(rows) == 256
    assert rows[0]["threshold"] == 0.0 and rows[-1]["threshold"] == 1.0
    # at level 160 the first image keeps {200} (P 1, R 0.5), the perfect one all of the truth (P 1, R 1)
    assert (rows[160]["precision"], rows[160]["recall"]) == (pytest.approx(1.0), pytest.approx(0.75))
    assert rows[100]["precision"] == pytest.approx((0.5 + 1.0) / 2)
