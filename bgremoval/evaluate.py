"""Evaluation at the images' own resolution: predict at the model's size, resize back, score."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bgremoval.imageio import load_mask, load_rgb
from bgremoval.metrics import ImageScores, score_image, summarise

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


def choose_size(rows: pd.DataFrame, predictor_at: Callable[[int], Predictor], sizes: Sequence[int], max_pixels: int,
                tolerance: float = 0.0, progress: bool = False) -> tuple[int, dict[int, dict[str, float]]]:
    """The serving size, chosen with the trained weights on `rows` (the val split): each size is scored at
    the images' own resolution; the smallest size (the fastest) whose IoU is within `tolerance` of the best
    is taken. Returns it and every size's summary metrics."""
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"evaluate.size_choices must list positive sizes; got {list(sizes)}")
    if rows.empty:
        raise ValueError("evaluate.size_choices: the val split is empty, so there is nothing to choose the size on")
    by_size = {}
    for size in sizes:
        _, scores = evaluate(rows, predictor_at(size), max_pixels, progress=f"val at {size}" if progress else None)
        by_size[size] = summarise(scores)
    best = max(m["iou"] for m in by_size.values())
    return min(s for s, m in by_size.items() if m["iou"] >= best - tolerance), by_size


def error_overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The image with misses (truth not predicted) in red and false positives in blue."""
    p, t = pred >= 0.5, truth >= 0.5
    out = image.astype(np.float32) * 0.6
    out[t & ~p] = [230, 30, 30]
    out[p & ~t] = [30, 90, 255]
    out[p & t] = out[p & t] * 0.5 + np.array([40, 160, 40]) * 0.5
    return out.astype(np.uint8)
