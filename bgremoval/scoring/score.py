"""Scoring a predictor on manifest rows at the images' own resolution."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from bgremoval.data.masks import load_mask
from bgremoval.images import load_rgb
from bgremoval.scoring.metrics import ImageScores, score_image
from bgremoval.serving.refine import Predictor


def score(rows: pd.DataFrame, predict: Predictor, max_pixels: int,
          progress: str | None = None, dis: bool = False) -> tuple[pd.DataFrame, list[ImageScores]]:
    """Per-image scores (a table with the files and the milliseconds `predict` took) and the raw scores for
    the dataset summary; with `progress`, a progress bar of that name over the images; with `dis`, the DIS
    measures too (scoring.metrics.DIS). Each mask is read from its manifest row."""
    from tqdm import tqdm

    records, scores = [], []
    for _, row in tqdm(rows.iterrows(), total=len(rows), desc=progress, unit="image", leave=False,
                       disable=progress is None):
        image = load_rgb(Path(row["image_path"]), max_pixels)
        truth = load_mask(row, max_pixels).astype(np.float64) / 255
        start = time.perf_counter()
        prob = predict(image)
        ms = 1000 * (time.perf_counter() - start)
        s = score_image(prob, truth, dis=dis)
        scores.append(s)
        records.append({"name": row["name"], "image_path": row["image_path"], "mask_path": row["mask_path"],
                        "mae": s.mae, "iou": s.iou, "dice": s.dice, "boundary_f": s.boundary_f, **(s.dis or {}),
                        "ms": ms})
    return pd.DataFrame(records), scores


def headline(rows: pd.DataFrame, predict: Predictor, max_pixels: int, progress: str) -> dict[str, float]:
    """The headline metrics (scoring.metrics.HEADLINE) of a predictor on some rows."""
    from bgremoval.scoring.metrics import HEADLINE, summarise

    summary = summarise(score(rows, predict, max_pixels, progress=progress)[1])
    return {k: summary[k] for k in HEADLINE}


def reported(summary: dict[str, float]) -> dict[str, float]:
    """What a metrics file reports of a summary: the headline metrics, then the DIS measures it has."""
    from bgremoval.scoring.metrics import DIS, HEADLINE

    return {k: summary[k] for k in (*HEADLINE, *DIS) if k in summary}
