"""Evaluation metrics against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from scipy import ndimage
from sklearn.metrics import jaccard_score

from bgremoval.scoring.metrics import (
    DIS,
    HEADLINE,
    HIGHER_IS_BETTER,
    boundary_f,
    boundary_pixels,
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


def _pr_by_counting(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The protocol's precision and recall at levels t = 0..255, counted pixel by pixel (no histograms): a pixel
    is predicted foreground when round(255 x pred) >= t; precision is 0 where nothing is predicted."""
    level, truth = np.rint(np.asarray(pred) * 255), np.asarray(gt) >= 0.5
    precision, recall = np.zeros(256), np.zeros(256)
    for t in range(256):
        kept = level >= t
        tp = np.count_nonzero(kept & truth)
        precision[t] = tp / np.count_nonzero(kept) if kept.any() else 0.0
        recall[t] = tp / np.count_nonzero(truth)
    return precision, recall


def _f_beta(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """F with beta^2 = 0.3, written out; 0 where precision and recall are both 0."""
    num, den = 1.3 * precision * recall, 0.3 * precision + recall
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def test_max_f_averages_precision_and_recall_over_images_before_f():
    # By hand: a 32x32 truth with a 16x16 square (a quarter of the pixels), predicted exactly, and predicted blank.
    # Level 0 keeps every pixel in both: P = 0.25, R = 1. Levels 1..255: exact P = R = 1, blank P = R = 0.
    # Averaged over the images: level 0 P 0.25, R 1 -> F = 1.3 * 0.25 / (0.075 + 1) = 0.302; levels >= 1
    # P = R = 0.5 -> F = 1.3 * 0.25 / (0.15 + 0.5) = 0.5. max F = 0.5, where the mean of each image's own max F
    # would be (1 + 0.302) / 2 = 0.651.
    gt = np.zeros((32, 32))
    gt[8:24, 8:24] = 1
    assert summarise([score_image(gt, gt), score_image(np.zeros_like(gt), gt)])["max_f"] == pytest.approx(0.5, abs=1e-6)

    rng = np.random.default_rng(0)
    preds = [rng.random((8, 8)) for _ in range(3)]
    gts = [rng.random((8, 8)) > 0.6 for _ in range(3)]
    scores = [score_image(p, g) for p, g in zip(preds, gts)]
    curves = [_pr_by_counting(p, g) for p, g in zip(preds, gts)]
    want = _f_beta(np.mean([c[0] for c in curves], 0), np.mean([c[1] for c in curves], 0)).max()
    per_image = np.mean([_f_beta(*c).max() for c in curves])
    assert abs(want - per_image) > 0.01  # the data tells the two orders apart
    assert summarise(scores)["max_f"] == pytest.approx(want)
    # IoU is the mean of each image's own, by scikit-learn's Jaccard index at 0.5
    ious = [jaccard_score(g.ravel(), p.ravel() >= 0.5) for p, g in zip(preds, gts)]
    assert summarise(scores)["iou"] == pytest.approx(np.mean(ious))


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
    perfect, bad = summarise([score_image(gt, gt, dis=True)]), summarise([score_image(poor, gt, dis=True)])
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


def _edge_by_loop(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a background 4-neighbour inside the image, one pixel at a time."""
    h, w = mask.shape
    out = np.zeros_like(mask, bool)
    for y in range(h):
        for x in range(w):
            if mask[y, x]:
                out[y, x] = any(0 <= y + dy < h and 0 <= x + dx < w and not mask[y + dy, x + dx]
                                for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)))
    return out


def _boundary_f_by_distance(pred: np.ndarray, gt: np.ndarray) -> float:
    """Boundary F computed another way: a boundary pixel counts when the other mask's boundary lies within
    the tolerance radius (0.008 of the diagonal, rounded up), measured by a Euclidean distance transform."""
    p, t = _edge_by_loop(pred >= 0.5), _edge_by_loop(gt >= 0.5)
    radius = max(1, int(np.ceil(0.008 * np.hypot(*gt.shape))))
    near_t, near_p = ndimage.distance_transform_edt(~t) <= radius, ndimage.distance_transform_edt(~p) <= radius
    precision, recall = (p & near_t).sum() / p.sum(), (t & near_p).sum() / t.sum()
    return 2 * precision * recall / (precision + recall)


def test_boundary_pixels_match_a_pixel_by_pixel_definition_and_skip_the_frame():
    rng = np.random.default_rng(3)
    for _ in range(5):
        mask = ndimage.binary_opening(rng.random((23, 31)) > 0.45)
        assert np.array_equal(boundary_pixels(mask), _edge_by_loop(mask))
    full = np.ones((6, 7), bool)
    assert not boundary_pixels(full).any()  # a subject filling the photo has no edge to cut


def test_boundary_f_does_not_count_the_image_frame_as_boundary():
    """The DAVIS definition: the bottom half of a photo has one edge, its top row; a prediction stopping short
    of the frame has a second edge that the truth lacks."""
    gt = np.zeros((100, 100))
    gt[50:] = 1
    assert boundary_f(gt, gt) == pytest.approx(1.0)
    short = np.zeros((100, 100))
    short[50:90] = 1
    # truth's edge (row 50) is all found; half the predicted edge (row 89) is 39 rows from any true edge
    assert boundary_f(short, gt) == pytest.approx(2 * 0.5 * 1 / 1.5, abs=1e-6)
    assert boundary_f(short, gt) == pytest.approx(_boundary_f_by_distance(short, gt), abs=1e-6)


def test_boundary_f_agrees_with_a_distance_transform_computation():
    rng = np.random.default_rng(7)
    for _ in range(6):
        gt = ndimage.gaussian_filter(rng.random((60, 80)), 4) > 0.5
        pred = ndimage.binary_dilation(gt, iterations=int(rng.integers(0, 4))) ^ (rng.random(gt.shape) > 0.985)
        assert boundary_f(pred.astype(float), gt.astype(float)) == pytest.approx(
            _boundary_f_by_distance(pred.astype(float), gt.astype(float)), abs=1e-6)


def test_dis_measures_by_what_each_must_give():
    gt = np.zeros((64, 64))
    gt[16:48, 20:44] = 1
    perfect = score_image(gt, gt, dis=True).dis
    assert set(perfect) == set(DIS)
    assert perfect["s_measure"] == pytest.approx(1.0) and perfect["weighted_f"] == pytest.approx(1.0)
    assert perfect["hce"] == 0.0
    # a second, separate true object the prediction misses takes a person's effort to correct
    two = gt.copy()
    two[2:8, 2:8] = 1
    assert score_image(gt, two, dis=True).dis["hce"] > 0
    # predictions are scored as they are: a faint mask (0.4 everywhere it should be 1) is not stretched to 1
    faint = score_image(gt * 0.4, gt, dis=True).dis
    assert faint["weighted_f"] < 0.9 and faint["s_measure"] < perfect["s_measure"]
    assert score_image(np.zeros_like(gt), gt, dis=True).dis["weighted_f"] == 0.0


def test_summary_has_the_dis_means_only_when_every_image_has_them():
    gt = np.zeros((32, 32))
    gt[8:24, 8:24] = 1  # a 16x16 square: a quarter of the 1024 pixels
    with_dis = [score_image(gt, gt, dis=True), score_image(np.zeros_like(gt), gt, dis=True)]
    summary = summarise(with_dis)
    assert set(DIS) <= set(summary)
    # Each image's value by hand, then their mean:
    # weighted F: 1 for the exact mask, 0 for the blank one (not one true positive) -> 0.5
    assert summary["weighted_f"] == pytest.approx(0.5)
    # S-measure (Fan et al. 2017, alpha 0.5): 1 for the exact mask. The blank one: object term u*O_fg + (1-u)*O_bg
    # with u = 0.25; O_fg = 2x / (x^2 + 1 + sigma) at the prediction's mean x = 0 inside the square = 0, O_bg the
    # same on 1 - prediction outside it, x = 1, sigma = 0: 2 / 2 = 1 -> 0.75. Region term: each quadrant around
    # the square's centroid holds both truth values while the prediction is constant there: SSIM 0 -> 0.
    # S = 0.5 * 0.75 + 0.5 * 0 = 0.375; the mean (1 + 0.375) / 2 = 0.6875
    assert summary["s_measure"] == pytest.approx(0.6875, abs=1e-6)
    # MAE: 0 and 256 / 1024 -> 0.125
    assert summary["mae"] == pytest.approx(0.125)
    # HCE: nothing to correct in the exact masks; a whole missed square takes a person's effort
    assert summarise([with_dis[0], with_dis[0]])["hce"] == 0.0 and summary["hce"] > 0
    assert not set(DIS) & set(summarise([with_dis[0], score_image(gt, gt)]))
