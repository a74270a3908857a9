"""Evaluation at the images' own resolution: predict at the model's size, resize back, score."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bgremoval.imageio import load_mask, load_rgb
from bgremoval.metrics import ImageScores, score_image, summarise
from bgremoval.refine import Predictor, Refine, combine, mirrored_prediction


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


def refine_grid(flip: Sequence[bool], main_object: Sequence[bool], sharpen: Sequence[float]) -> list[Refine]:
    """Every combination of the listed choices (evaluate.refine), each once."""
    if not (flip and main_object and sharpen):
        raise ValueError("evaluate.refine: flip, main_object and sharpen must each list at least one choice "
                         "(e.g. flip: [false], main_object: [false], sharpen: [1.0] for no refinement)")
    return list(dict.fromkeys(Refine(bool(f), bool(m), float(k)) for f in flip for m in main_object for k in sharpen))


def choose_refine(rows: pd.DataFrame, predict: Predictor, choices: Sequence[Refine], max_pixels: int,
                  tolerance: float = 0.0, progress: bool = False) -> tuple[Refine, dict[str, dict[str, float]]]:
    """The refinement, chosen with the served weights at the serving size on `rows` (the val split). IoU
    decides what the mask covers: the cheapest choice (fewest forward passes) within `tolerance` of the
    best IoU is taken, and of those the one with the lowest MAE (sharpening moves MAE, never IoU). Each
    image is predicted once (and once mirrored, if any choice flips). Returns it and each choice's summary
    (none when there is only one choice: it is taken as it is, and val is not scored)."""
    from tqdm import tqdm

    choices = list(dict.fromkeys(choices))
    if not choices:
        raise ValueError("evaluate.refine lists no choice")
    if len(choices) == 1:
        return choices[0], {}
    if rows.empty:
        raise ValueError("evaluate.refine: the val split is empty, so there is nothing to choose the refinement on")
    any_flip = any(c.flip for c in choices)
    scores: dict[Refine, list[ImageScores]] = {c: [] for c in choices}
    for _, row in tqdm(rows.iterrows(), total=len(rows), desc="val refinements", unit="image", leave=False,
                       disable=not progress):
        image = load_rgb(Path(row["image_path"]), max_pixels)
        truth = load_mask(Path(row["mask_path"]), max_pixels).astype(np.float64) / 255
        plain = predict(image)
        mirrored = mirrored_prediction(predict, image) if any_flip else None
        for choice in choices:
            scores[choice].append(score_image(combine(plain, mirrored, choice), truth))
    summaries = {c: summarise(s) for c, s in scores.items()}
    best = max(m["iou"] for m in summaries.values())
    close = [c for c in choices if summaries[c]["iou"] >= best - tolerance]
    chosen = min(close, key=lambda c: (c.cost, summaries[c]["mae"]))
    return chosen, {c.name: summaries[c] for c in choices}


def error_overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The image with misses (truth not predicted) in red and false positives in blue."""
    p, t = pred >= 0.5, truth >= 0.5
    out = image.astype(np.float32) * 0.6
    out[t & ~p] = [230, 30, 30]
    out[p & ~t] = [30, 90, 255]
    out[p & t] = out[p & t] * 0.5 + np.array([40, 160, 40]) * 0.5
    return out.astype(np.uint8)
