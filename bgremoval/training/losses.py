"""Segmentation losses on probabilities: weighted BCE (foreground, and the band along the true edge), soft
Dice, soft IoU, and BCE + Dice."""

from __future__ import annotations

from collections.abc import Callable

from keras import ops

_EPS = 1e-6


def edge_band(y_true, band: int):
    """Where the true mask changes within `band` pixels: its dilation minus its erosion by a (2 band + 1)²
    max pool. 1 along a hard edge, a fraction along a soft one, 0 elsewhere."""
    k = 2 * band + 1
    dilated = ops.max_pool(y_true, pool_size=k, strides=1, padding="same")
    eroded = -ops.max_pool(-y_true, pool_size=k, strides=1, padding="same")
    return dilated - eroded


def weighted_bce(pos_weight: float, edge_weight: float, band: int) -> Callable:
    """Binary cross-entropy with foreground pixels weighted by pos_weight (from the augment stage), and the
    pixels within `band` of the true edge by (1 + edge_weight) on top: a cut-out is judged by its edge, and
    the edge is a few per cent of the pixels."""

    def loss(y_true, y_pred):
        p = ops.clip(y_pred, _EPS, 1 - _EPS)
        per_pixel = -(pos_weight * y_true * ops.log(p) + (1 - y_true) * ops.log(1 - p))
        weight = pos_weight * y_true + (1 - y_true)
        if edge_weight > 0:
            near_edge = 1 + edge_weight * edge_band(y_true, band)
            per_pixel, weight = per_pixel * near_edge, weight * near_edge
        # Normalise by the mean weight so the weights change the balance, not the loss scale.
        return ops.mean(per_pixel, axis=(1, 2, 3)) / ops.mean(weight, axis=(1, 2, 3))

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


def make_loss(name: str, pos_weight: float, edge_weight: float, edge_band_px: int) -> Callable:
    """A loss by its params.yaml name; its BCE weighs foreground by pos_weight and the edge's band by
    edge_weight (train.edge_weight, train.edge_band)."""
    if name not in LOSSES:
        raise ValueError(f"train.loss must be one of {LOSSES}; got {name!r}")
    if not edge_weight >= 0:
        raise ValueError(f"train.edge_weight must be 0 or more; got {edge_weight!r}")
    if edge_weight > 0 and (isinstance(edge_band_px, bool) or int(edge_band_px) != edge_band_px or edge_band_px < 1):
        raise ValueError(f"train.edge_band must be a whole number of pixels, 1 or more; got {edge_band_px!r}")
    if edge_weight > 0 and name not in ("bce", "bce_dice"):
        raise ValueError(f"train.edge_weight weighs BCE's pixels; train.loss {name!r} has no BCE term: use bce or "
                         "bce_dice, or set train.edge_weight to 0")
    bce = weighted_bce(pos_weight, edge_weight, int(edge_band_px))
    table = {
        "bce": bce,
        "dice": dice_loss,
        "iou": iou_loss,
        "bce_dice": lambda t, p: bce(t, p) + dice_loss(t, p),
    }
    fn = table[name]
    fn.__name__ = name  # keras names the logged loss after the function
    return fn
