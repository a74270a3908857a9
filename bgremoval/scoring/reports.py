"""What the evaluate stage shows people: the worst test images, cut-outs, and the tables behind its plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bgremoval.data.masks import load_mask
from bgremoval.images import load_rgb
from bgremoval.pictures import checkerboard_composite, grid
from bgremoval.scoring.metrics import ImageScores, pr_curve
from bgremoval.serving.refine import Predictor


def error_overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The image with misses (truth not predicted) in red and false positives in blue."""
    p, t = pred >= 0.5, truth >= 0.5
    out = image.astype(np.float32) * 0.6
    out[t & ~p] = [230, 30, 30]
    out[p & ~t] = [30, 90, 255]
    out[p & t] = out[p & t] * 0.5 + np.array([40, 160, 40]) * 0.5
    return out.astype(np.uint8)


def worst_grid(table: pd.DataFrame, rows: pd.DataFrame, predict: Predictor, n: int, max_pixels: int) -> Image.Image:
    """The n images with the lowest IoU (table: score's per-image table of the manifest `rows`), errors coloured."""
    by_name = rows.set_index("name", drop=False)
    tiles, labels = [], []
    for _, row in table.nsmallest(n, "iou").iterrows():
        image = load_rgb(Path(row["image_path"]), max_pixels)
        truth = load_mask(by_name.loc[row["name"]], max_pixels) / 255
        tiles.append(error_overlay(image, predict(image), truth))
        labels.append(f"{row['name']} iou {row['iou']:.2f}")
    return grid(tiles, labels, cols=4, tile=200)


def cutout_grid(rows: pd.DataFrame, predict: Predictor, n: int, max_pixels: int) -> Image.Image:
    """n test images beside their cut-outs on a checkerboard, as a user would see them."""
    tiles, labels = [], []
    for _, row in rows.head(n).iterrows():
        image = load_rgb(Path(row["image_path"]), max_pixels)
        tiles += [image, checkerboard_composite(image, predict(image))]
        labels += [str(row["name"]), "cut-out"]
    return grid(tiles, labels, cols=4, tile=200)


def pr_table(scores: list[ImageScores]) -> pd.DataFrame:
    """The precision-recall curve over the test split (a DVC plot)."""
    return pd.DataFrame(pr_curve(scores))


def iou_histogram(ious: pd.Series, bins: int = 10) -> pd.DataFrame:
    """How many images reach each IoU band (a DVC plot)."""
    counts, edges = np.histogram(ious, bins=bins, range=(0, 1))
    return pd.DataFrame({"iou": [f"{a:.1f}-{b:.1f}" for a, b in zip(edges, edges[1:])], "images": counts})


def write_test_reports(table: pd.DataFrame, scores: list[ImageScores], rows: pd.DataFrame, predict: Predictor,
                       baseline_iou: pd.Series, worst: int, cutouts: int, max_pixels: int, out: Path) -> None:
    """The evaluate stage's reports in `out`: the per-image table (worst first, beside stock U²-NetP's IoU),
    the precision-recall curve, the IoU histogram, the worst cases and a grid of cut-outs."""
    table.assign(baseline_iou=table["name"].map(baseline_iou)).sort_values("iou").to_csv(
        out / "eval_images.csv", index=False, float_format="%.4f")
    pr_table(scores).to_csv(out / "pr_curve.csv", index=False, float_format="%.4f")
    iou_histogram(table["iou"]).to_csv(out / "iou_hist.csv", index=False)
    worst_grid(table, rows, predict, worst, max_pixels).save(out / "eval_worst.png")
    cutout_grid(rows, predict, cutouts, max_pixels).save(out / "cutouts.png")
