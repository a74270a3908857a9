"""Scoring a predictor on manifest rows, and the report pictures and tables the evaluate stage writes."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bgremoval.scoring import score as score_module
from bgremoval.scoring.metrics import score_image, summarise
from bgremoval.scoring.reports import cutout_grid, error_overlay, iou_histogram, pr_table, worst_grid
from bgremoval.scoring.score import score
from tests.helpers import disc_folder

TILE, LABEL = 200, 14  # the report grids' tile side and label strip


def perfect(image: np.ndarray) -> np.ndarray:
    """The disc exactly: its pixels are bright (>= 150), the noise around it dark (< 60)."""
    return (image.mean(axis=2) > 100).astype(np.float64)


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def nothing(image: np.ndarray) -> np.ndarray:
    return np.zeros(image.shape[:2])


@pytest.fixture
def discs(tmp_path) -> pd.DataFrame:
    return disc_folder(tmp_path, 3)


def test_a_perfect_predictor_scores_perfectly_at_the_images_resolution(discs):
    seen = []
    table, scores = score(discs, lambda image: seen.append(image.shape) or perfect(image), max_pixels=10**6)
    assert seen == [(40, 48, 3)] * 3
    assert list(table.columns) == ["name", "image_path", "mask_path", "mae", "iou", "dice", "boundary_f", "ms"]
    assert table["name"].tolist() == discs["name"].tolist()
    assert table["image_path"].tolist() == discs["image_path"].tolist()
    assert table["mask_path"].tolist() == discs["mask_path"].tolist()
    assert (table["iou"] == 1.0).all() and (table["dice"] == 1.0).all() and (table["mae"] == 0.0).all()
    assert summarise(scores) == {"mae": 0.0, "max_f": pytest.approx(1.0), "iou": 1.0, "dice": 1.0,
                                 "boundary_f": pytest.approx(1.0)}


def test_a_blind_predictor_scores_zero_iou_and_mae_equal_to_the_foreground(discs):
    table, scores = score(discs, nothing, max_pixels=10**6)
    assert len(scores) == 3 and (table["iou"] == 0.0).all()
    fg = [np.mean(perfect(_rgb(p))) for p in discs["image_path"]]
    assert table["mae"].tolist() == pytest.approx(fg)


def test_ms_is_the_time_spent_in_predict_only(discs, monkeypatch):
    """The ms column times the predictor alone, not reading the image and mask files."""
    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(score_module, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))
    for reader in ("load_rgb", "load_mask"):  # reading the files "takes" a second each, outside the timing
        real = getattr(score_module, reader)

        def slow_read(*args, _real=real):
            clock.now += 1.0
            return _real(*args)

        monkeypatch.setattr(score_module, reader, slow_read)

    def slow_perfect(image):
        clock.now += 0.125  # 125 ms "spent" predicting
        return perfect(image)

    table, _ = score(discs, slow_perfect, max_pixels=10**6)
    assert table["ms"].tolist() == pytest.approx([125.0] * 3)


def test_error_overlay_colours_misses_false_positives_and_hits():
    image = np.full((2, 2, 3), 100, np.uint8)
    pred = np.array([[1.0, 0.0], [1.0, 0.0]])
    truth = np.array([[1.0, 1.0], [0.0, 0.0]])
    out = error_overlay(image, pred, truth)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert tuple(out[0, 1]) == (230, 30, 30)  # missed foreground: red
    assert tuple(out[1, 0]) == (30, 90, 255)  # false positive: blue
    assert tuple(out[1, 1]) == (60, 60, 60)  # correct background: dimmed
    assert tuple(out[0, 0]) == (50, 110, 50)  # found foreground: dimmed, tinted green


def test_iou_histogram_counts_images_per_band():
    hist = iou_histogram(pd.Series([0.05, 0.15, 0.19, 0.55, 0.95, 1.0]))
    assert list(hist.columns) == ["iou", "images"]
    assert hist["iou"].tolist()[:2] == ["0.0-0.1", "0.1-0.2"] and hist["iou"].iloc[-1] == "0.9-1.0"
    assert hist["images"].tolist() == [1, 2, 0, 0, 0, 1, 0, 0, 0, 2]  # an IoU of 1 counts in the top band
    assert iou_histogram(pd.Series([0.3, 0.7]), bins=2)["images"].tolist() == [1, 1]


def test_pr_table_has_a_row_per_threshold():
    gt = np.zeros((8, 8))
    gt[:4] = 1
    pred = np.linspace(0, 1, 64).reshape(8, 8)[::-1]  # brighter on top, where the foreground is
    table = pr_table([score_image(pred, gt), score_image(gt, gt)])
    assert table.shape == (256, 3) and list(table.columns) == ["threshold", "precision", "recall"]
    assert table["threshold"].iloc[0] == 0.0 and table["threshold"].iloc[-1] == 1.0
    assert table["recall"].iloc[0] == pytest.approx(1.0) and table["precision"].iloc[0] == pytest.approx(0.5)
    assert table["recall"].is_monotonic_decreasing


def test_worst_grid_shows_the_lowest_iou_images_with_their_errors(discs):
    table, _ = score(discs, perfect, max_pixels=10**6)
    table["iou"] = [0.9, 0.2, 0.5]
    asked = []

    def blind(image):
        asked.append(discs["name"][[np.array_equal(image, _rgb(p)) for p in discs["image_path"]]].item())
        return nothing(image)

    picture = worst_grid(table, discs, blind, n=2, max_pixels=10**6)
    assert asked == ["d_001", "d_002"]  # worst first
    assert picture.size == (4 * TILE, TILE + LABEL)
    r, g, b = picture.getpixel((TILE // 2, LABEL + TILE // 2))  # the first tile's centre: a missed disc
    assert r > 200 and g < 60 and b < 60


def test_cutout_grid_pairs_each_image_with_its_cutout(discs):
    picture = cutout_grid(discs, nothing, n=3, max_pixels=10**6)
    assert picture.size == (4 * TILE, 2 * (TILE + LABEL))  # 3 images + 3 cut-outs, 4 to a row
    assert cutout_grid(discs, nothing, n=2, max_pixels=10**6).size == (4 * TILE, TILE + LABEL)
    centre, cutout_centre = (TILE // 2, LABEL + TILE // 2), (TILE + TILE // 2, LABEL + TILE // 2)
    assert min(picture.getpixel(centre)) >= 140  # the image itself: the bright disc
    r, g, b = picture.getpixel(cutout_centre)  # nothing cut out: the grey board (150 and 200 squares) shows
    assert r == g == b and 150 <= r <= 200
    kept = cutout_grid(discs, perfect, n=1, max_pixels=10**6).getpixel(cutout_centre)
    assert kept == picture.getpixel(centre)  # the disc cut out: its own pixels
