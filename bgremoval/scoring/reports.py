"""What the evaluate stage shows people: the worst test images, cut-outs, and the tables behind its plots;
and the settings of the stages that score on test (evaluate, baseline), from their params.yaml keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from bgremoval.data.masks import load_mask
from bgremoval.images import load_rgb
from bgremoval.pictures import checkerboard_composite, grid
from bgremoval.scoring.metrics import ImageScores, pr_curve
from bgremoval.serving.refine import Predictor


@dataclass(frozen=True)
class EvaluateConfig:
    """The evaluate stage's settings: params.yaml evaluate:, prepare.max_pixels and paths.reports."""

    worst: int          # worst test images drawn in eval_worst.png
    cutouts: int        # test images drawn with their cut-outs in cutouts.png
    max_pixels: int     # prepare.max_pixels: images are scored and drawn at most this large
    reports: Path       # paths.reports: where the reports are written

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "EvaluateConfig":
        return cls(**params["evaluate"], max_pixels=params["prepare"]["max_pixels"],
                   reports=Path(params["paths"]["reports"]))


@dataclass(frozen=True)
class BaselineConfig:
    """The baseline stage's settings: params.yaml baseline:, model.onnx_path, prepare.max_pixels and paths.reports."""

    size: int                    # stock U²-NetP is scored at this input size (rembg's own)
    onnx_template: str | None    # model.onnx_path: rembg's u2netp graph (None: the installed wheel's)
    max_pixels: int              # prepare.max_pixels: images are scored at most this large
    reports: Path                # paths.reports: where the scores are written

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "BaselineConfig":
        return cls(**params["baseline"], onnx_template=params["model"]["onnx_path"],
                   max_pixels=params["prepare"]["max_pixels"], reports=Path(params["paths"]["reports"]))


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


def write_test_reports(table: pd.DataFrame, scores: list[ImageScores], *, rows: pd.DataFrame, predict: Predictor,
                       baseline_iou: pd.Series, cfg: EvaluateConfig) -> None:
    """The evaluate stage's reports in cfg.reports: the per-image table (worst first, beside stock U²-NetP's IoU),
    the precision-recall curve, the IoU histogram, the worst cases and a grid of cut-outs."""
    out, max_pixels = cfg.reports, cfg.max_pixels
    table.assign(baseline_iou=table["name"].map(baseline_iou)).sort_values("iou").to_csv(
        out / "eval_images.csv", index=False, float_format="%.4f")
    pr_table(scores).to_csv(out / "pr_curve.csv", index=False, float_format="%.4f")
    iou_histogram(table["iou"]).to_csv(out / "iou_hist.csv", index=False)
    worst_grid(table, rows, predict, cfg.worst, max_pixels).save(out / "eval_worst.png")
    cutout_grid(rows, predict, cfg.cutouts, max_pixels).save(out / "cutouts.png")
