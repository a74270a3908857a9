"""Evaluation metrics of predicted masks against ground truth (the salient-object protocol).

Predictions are probabilities in [0, 1] at the ground truth's size; ground truth is binarised at
0.5. Per-image scores are averaged over images, except max F, which (as in the protocol) averages
precision and recall over images at each of 256 thresholds and then takes the best F.

The dichotomous-segmentation measures (S-measure, weighted F, mean E-measure, human correction effort)
come from pysodmetrics, as the field reports them; they cost more, so only the scores people read
(evaluate, baseline, the benchmarks) ask for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

BETA2 = 0.3  # weights precision over recall, as the salient-object literature does
# Direction of every summary metric.
HIGHER_IS_BETTER = {"max_f": True, "iou": True, "dice": True, "boundary_f": True, "mae": False,
                    "s_measure": True, "weighted_f": True, "mean_e": True, "hce": False}
# The metrics `dvc metrics show` prints for a model and for the stock baseline (dice is IoU's twin).
HEADLINE = ("mae", "max_f", "iou", "boundary_f")
# The dichotomous-segmentation measures (Qin et al., ECCV 2022, after the salient-object ones): structure
# (S-measure), weighted F, mean E-measure, and HCE: the clicks and strokes a person would need to correct the
# mask (lower is better; a count per image, not a share).
DIS = ("s_measure", "weighted_f", "mean_e", "hce")
N_THRESHOLDS = 256
_EPS = 1e-8


@dataclass(frozen=True)
class ImageScores:
    """Per-image scores and the curves max F needs."""

    mae: float
    iou: float
    dice: float
    boundary_f: float
    precision: np.ndarray  # (256,) at thresholds 0/255 .. 255/255
    recall: np.ndarray
    dis: dict[str, float] | None  # the DIS measures, when asked for


def _binary(gt: np.ndarray) -> np.ndarray:
    return np.asarray(gt, np.float64) >= 0.5


def precision_recall(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of `pred >= t/255` for t = 0..255, from two histograms (one pass)."""
    levels = np.clip(np.round(np.asarray(pred, np.float64) * 255), 0, 255).astype(np.int64)
    truth = _binary(gt)
    fg = np.bincount(levels[truth], minlength=256)
    bg = np.bincount(levels[~truth], minlength=256)
    tp = np.cumsum(fg[::-1])[::-1]  # pixels at or above each level
    fp = np.cumsum(bg[::-1])[::-1]
    precision = tp / (tp + fp + _EPS)
    recall = tp / (truth.sum() + _EPS)
    return precision, recall


def iou_dice(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> tuple[float, float]:
    """IoU and Dice of the prediction thresholded at `threshold`; both 1.0 when both masks are empty."""
    p, t = np.asarray(pred) >= threshold, _binary(gt)
    inter, union, total = (p & t).sum(), (p | t).sum(), p.sum() + t.sum()
    if union == 0:
        return 1.0, 1.0
    return float(inter / union), float(2 * inter / total)


BOUNDARY_TOLERANCE = 0.008  # boundary F's match distance, as a share of the image's diagonal


def boundary_pixels(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask that touch the background (4-neighbourhood). The image frame is not background: a
    subject cut by the frame has no boundary there (as DAVIS measures it), since no cut-out edge lies there."""
    return mask & ~ndimage.binary_erosion(mask, border_value=1)


def boundary_radius(shape: tuple[int, ...], tolerance: float = BOUNDARY_TOLERANCE) -> int:
    """Boundary F's match distance in pixels for an image of this shape: tolerance x its diagonal, at least 1."""
    return max(1, int(np.ceil(tolerance * np.hypot(*shape[:2]))))


def boundary_f(pred: np.ndarray, gt: np.ndarray, tolerance: float = BOUNDARY_TOLERANCE,
               threshold: float = 0.5) -> float:
    """F-score of boundary pixels matched within tolerance x image diagonal (the DAVIS F measure)."""
    p, t = boundary_pixels(np.asarray(pred) >= threshold), boundary_pixels(_binary(gt))
    if not p.any() and not t.any():
        return 1.0
    if not p.any() or not t.any():
        return 0.0
    radius = boundary_radius(p.shape, tolerance)
    disk = np.hypot(*np.mgrid[-radius : radius + 1, -radius : radius + 1]) <= radius
    precision = (p & ndimage.binary_dilation(t, disk)).sum() / p.sum()
    recall = (t & ndimage.binary_dilation(p, disk)).sum() / t.sum()
    return float(2 * precision * recall / (precision + recall + _EPS))


def dis_measures(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """S-measure, weighted F, mean E-measure and HCE of one prediction in [0, 1], by pysodmetrics."""
    import py_sod_metrics as sod

    # normalize=False: the prediction as it is (pysodmetrics' default stretches it to [0, 1] first, as MATLAB did).
    p, t = np.clip(np.asarray(pred, np.float64), 0, 1), _binary(gt)
    measures = {"s_measure": sod.Smeasure(), "weighted_f": sod.WeightedFmeasure(), "mean_e": sod.Emeasure(),
                "hce": sod.HumanCorrectionEffortMeasure()}
    for m in measures.values():
        m.step(p, t, normalize=False)
    return {
        "s_measure": float(measures["s_measure"].get_results()["sm"]),
        "weighted_f": float(measures["weighted_f"].get_results()["wfm"]),
        "mean_e": float(np.mean(measures["mean_e"].get_results()["em"]["curve"])),
        "hce": float(measures["hce"].get_results()["hce"]),
    }


def score_image(pred: np.ndarray, gt: np.ndarray, dis: bool = False) -> ImageScores:
    """All per-image scores of one prediction (H, W) in [0, 1] against its ground truth (H, W); with `dis`,
    the DIS measures too."""
    pred = np.asarray(pred, np.float64)
    if pred.shape != np.shape(gt):
        raise ValueError(f"prediction {pred.shape} and ground truth {np.shape(gt)} differ in size")
    precision, recall = precision_recall(pred, gt)
    iou, dice = iou_dice(pred, gt)
    return ImageScores(
        mae=float(np.abs(pred - _binary(gt)).mean()),
        iou=iou,
        dice=dice,
        boundary_f=boundary_f(pred, gt),
        precision=precision,
        recall=recall,
        dis=dis_measures(pred, gt) if dis else None,
    )


def f_measure(precision: np.ndarray, recall: np.ndarray, beta2: float = BETA2) -> np.ndarray:
    """F_beta from precision and recall (elementwise)."""
    return (1 + beta2) * precision * recall / (beta2 * precision + recall + _EPS)


def summarise(scores: list[ImageScores]) -> dict[str, float]:
    """Dataset metrics: mae, max_f, iou, dice, boundary_f, and the DIS measures' means when every image has them."""
    if not scores:
        raise ValueError("no images to score")
    precision = np.mean([s.precision for s in scores], axis=0)
    recall = np.mean([s.recall for s in scores], axis=0)
    return {
        "mae": float(np.mean([s.mae for s in scores])),
        "max_f": float(f_measure(precision, recall).max()),
        "iou": float(np.mean([s.iou for s in scores])),
        "dice": float(np.mean([s.dice for s in scores])),
        "boundary_f": float(np.mean([s.boundary_f for s in scores])),
    } | ({k: float(np.mean([s.dis[k] for s in scores])) for k in DIS} if all(s.dis for s in scores) else {})


def pr_curve(scores: list[ImageScores]) -> list[dict[str, float]]:
    """The dataset's precision-recall curve (averaged over images), one row per threshold."""
    precision = np.mean([s.precision for s in scores], axis=0)
    recall = np.mean([s.recall for s in scores], axis=0)
    return [{"threshold": t / 255, "precision": float(p), "recall": float(r)} for t, (p, r) in enumerate(zip(precision, recall))]
