"""Evaluation at the images' own resolution: predict at the model's size, resize back, score."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from bgremoval.imageio import load_mask, load_rgb
from bgremoval.metrics import ImageScores, score_image

Predictor = Callable[[np.ndarray], np.ndarray]  # (H, W, 3) uint8 -> (H, W) float in [0, 1]


def keras_predictor(model, size: int) -> Predictor:
    """Squash the image to size x size (as training did), predict, resize the mask back."""
    from bgremoval.serving import Segmenter

    return Segmenter(model, size)


def evaluate(rows: pd.DataFrame, predict: Predictor, max_pixels: int,
             progress: str | None = None) -> tuple[pd.DataFrame, list[ImageScores]]:
    """Per-image scores (a table with the files) and the raw scores for the dataset summary; with
    `progress`, a progress bar of that name over the images."""
    from tqdm import tqdm

    records, scores = [], []
    for _, row in tqdm(rows.iterrows(), total=len(rows), desc=progress, unit="image", leave=False,
                       disable=progress is None):
        image = load_rgb(Path(row["image_path"]), max_pixels)
        truth = load_mask(Path(row["mask_path"]), max_pixels).astype(np.float64) / 255
        s = score_image(predict(image), truth)
        scores.append(s)
        records.append({"name": row["name"], "image_path": row["image_path"], "mae": s.mae, "iou": s.iou,
                        "dice": s.dice, "boundary_f": s.boundary_f})
    return pd.DataFrame(records), scores


def error_overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The image with misses (truth not predicted) in red and false positives in blue."""
    p, t = pred >= 0.5, truth >= 0.5
    out = image.astype(np.float32) * 0.6
    out[t & ~p] = [230, 30, 30]
    out[p & ~t] = [30, 90, 255]
    out[p & t] = out[p & t] * 0.5 + np.array([40, 160, 40]) * 0.5
    return out.astype(np.uint8)
