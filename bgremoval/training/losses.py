"""Segmentation losses on probabilities: weighted BCE, soft Dice, soft IoU, and BCE + Dice."""

from __future__ import annotations

from collections.abc import Callable

from keras import ops

_EPS = 1e-6


def weighted_bce(pos_weight: float) -> Callable:
    """Binary cross-entropy with foreground pixels weighted by pos_weight (from the augment stage)."""

    def loss(y_true, y_pred):
        p = ops.clip(y_pred, _EPS, 1 - _EPS)
        per_pixel = -(pos_weight * y_true * ops.log(p) + (1 - y_true) * ops.log(1 - p))
        # Normalise by the mean weight so pos_weight changes the balance, not the loss scale.
        norm = ops.mean(pos_weight * y_true + (1 - y_true), axis=(1, 2, 3))
        return ops.mean(per_pixel, axis=(1, 2, 3)) / norm

    return loss


def dice_loss(y_true, y_pred):
    """1 - soft Dice coefficient, per image."""
    inter = ops.sum(y_true * y_pred, axis=(1, 2, 3))
    total = ops.sum(y_true, axis=(1, 2, 3)) + ops.sum(y_pred, axis=(1, 2, 3))
    return 1 - (2 * inter + _EPS) / (total + _EPS)


def iou_loss(y_true, y_pred):
    """1 - soft IoU (Jaccard), per image."""
    inter = ops.sum(y_true * y_pred, axis=(1, 2, 3))
    union = ops.sum(y_true, axis=(1, 2, 3)) + ops.sum(y_pred, axis=(1, 2, 3)) - inter
    return 1 - (inter + _EPS) / (union + _EPS)


LOSSES = ("bce", "dice", "iou", "bce_dice")


def make_loss(name: str, pos_weight: float) -> Callable:
    """A loss by its params.yaml name."""
    bce = weighted_bce(pos_weight)
    table = {
        "bce": bce,
        "dice": dice_loss,
        "iou": iou_loss,
        "bce_dice": lambda t, p: bce(t, p) + dice_loss(t, p),
    }
    if name not in table:
        raise ValueError(f"train.loss must be one of {LOSSES}; got {name!r}")
    fn = table[name]
    fn.__name__ = name  # keras names the logged loss after the function
    return fn
