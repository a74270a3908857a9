"""Evaluation at the images' own resolution."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from bgremoval.evaluate import choose_size, error_overlay, evaluate, keras_predictor
from bgremoval.metrics import summarise
from tests.conftest import manifest_for


def test_predictions_come_back_at_the_image_size():
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x[..., :1])(inputs))  # "mask" = red channel
    image = np.zeros((30, 50, 3), np.uint8)
    image[:, 25:, 0] = 255
    pred = keras_predictor(model, size=16)(image)
    assert pred.shape == (30, 50) and 0 <= pred.min() and pred.max() <= 1
    assert pred[:, :20].mean() < 0.05 and pred[:, 30:].mean() > 0.95


def test_one_model_predicts_at_several_sizes():
    """evaluate.size_choices scores one loaded model at each size: each size keeps its own traced graph
    (through Keras' shared predict function, the second size failed in the U-Net's bilinear upsampling)."""
    from bgremoval.unet import build_unet

    model = build_unet([4, 8])
    image = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    first = keras_predictor(model, 32)(image)
    assert keras_predictor(model, 48)(image).shape == (30, 50)
    assert np.array_equal(keras_predictor(model, 32)(image), first)


def test_evaluate_scores_every_test_image(data_dir):
    rows = manifest_for(data_dir)
    truth_predictor = lambda image: np.zeros(image.shape[:2])  # noqa: E731 - predicts no foreground at all
    table, scores = evaluate(rows, truth_predictor, max_pixels=10**6)
    assert list(table["name"]) == list(rows["name"]) and len(scores) == len(rows)
    metrics = summarise(scores)
    assert metrics["iou"] == 0.0 and metrics["mae"] == pytest.approx(rows["fg_fraction"].mean(), abs=0.02)


def test_the_serving_size_is_the_smallest_within_tolerance_of_the_best_val_iou(data_dir):
    rows = manifest_for(data_dir)  # masks: the top 30 % of rows is foreground

    def predictor_at(size: int):
        """Finds more of the foreground the larger the size, all of it from 64 on."""
        def predict(image):
            out = np.zeros(image.shape[:2])
            out[: int(round(image.shape[0] * 0.3 * min(1.0, size / 64)))] = 1.0
            return out
        return predict

    size, by_size = choose_size(rows, predictor_at, [96, 32, 64, 48, 64], max_pixels=10**6)
    assert list(by_size) == [32, 48, 64, 96]  # each size once, smallest first
    assert by_size[64]["iou"] == by_size[96]["iou"] == 1.0 and by_size[32]["iou"] < by_size[48]["iou"] < 0.9
    assert size == 64  # the best val IoU; of the tied sizes, the smaller (faster) one
    assert choose_size(rows, predictor_at, [32, 48, 64], 10**6, tolerance=0.3)[0] == 48
    assert choose_size(rows, predictor_at, [32, 48, 64], 10**6, tolerance=1.0)[0] == 32
    with pytest.raises(ValueError, match="val split is empty"):
        choose_size(rows.iloc[:0], predictor_at, [32], 10**6)
    with pytest.raises(ValueError, match="evaluate.size_choices"):
        choose_size(rows, predictor_at, [], 10**6)


def test_error_overlay_colours_misses_and_false_positives():
    image = np.full((2, 2, 3), 100, np.uint8)
    pred = np.array([[1.0, 0.0], [1.0, 0.0]])
    truth = np.array([[1.0, 1.0], [0.0, 0.0]])
    out = error_overlay(image, pred, truth)
    assert tuple(out[0, 1]) == (230, 30, 30)  # missed foreground: red
    assert tuple(out[1, 0]) == (30, 90, 255)  # false positive: blue
    assert tuple(out[1, 1]) == (60, 60, 60)  # correct background: dimmed
