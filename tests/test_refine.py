"""Refining the predicted mask: what each refinement does, and how val chooses among them."""

from __future__ import annotations

import numpy as np
import pytest

from bgremoval.evaluate import choose_refine, refine_grid
from bgremoval.metrics import iou_dice
from bgremoval.refine import Refine, Refined, combine, keep_main_object, sharpen
from tests.conftest import manifest_for


def test_sharpening_moves_soft_pixels_away_from_one_half_and_keeps_what_is_foreground():
    p = np.linspace(0, 1, 101, dtype=np.float32)
    s = sharpen(p, 2.0)
    assert s[0] == 0 and s[50] == pytest.approx(0.5) and s[100] == 1
    assert np.all(np.diff(s) > 0)  # the ranking of pixels (and so max F) is kept
    assert np.all(np.abs(s - 0.5)[1:-1] >= np.abs(p - 0.5)[1:-1])  # more decisive
    assert np.array_equal(s >= 0.5, p >= 0.5)  # IoU at 0.5 is unchanged
    assert sharpen(p, 1.0) is p


def _two_objects() -> np.ndarray:
    prob = np.zeros((40, 60), np.float32)
    prob[5:25, 5:30] = 0.9      # the main object ...
    prob[4, 5:30] = 0.4         # ... with a soft rim above 0.3
    prob[30:36, 45:55] = 0.8    # a smaller one, elsewhere
    prob[0, 59] = 0.2           # faint noise below the object threshold
    return prob


def test_keep_main_object_keeps_the_largest_object_with_its_soft_rim_and_nothing_else():
    prob = _two_objects()
    kept = keep_main_object(prob)
    assert np.array_equal(kept[4:25, 5:30], prob[4:25, 5:30])  # the main object and its rim
    assert kept[30:36, 45:55].max() == 0 and kept[0, 59] == 0
    one = np.zeros_like(prob)
    one[10:20, 10:20] = 1.0
    assert np.array_equal(keep_main_object(one), one)  # a single object is left alone
    faint = np.full_like(prob, 0.4)
    assert np.array_equal(keep_main_object(faint), faint)  # no foreground at all: nothing to prefer


def test_flip_averages_with_the_mirrored_images_mask():
    calls = []

    def left_bright(image):  # a "network" that sees foreground where the red channel is bright
        calls.append(image.copy())
        return (image[..., 0] > 127).astype(np.float32) * 0.8

    image = np.zeros((4, 6, 3), np.uint8)
    image[:, :2, 0] = 255
    out = Refined(left_bright, Refine(flip=True))(image)
    assert len(calls) == 2 and any(np.array_equal(c, image[:, ::-1]) for c in calls)
    assert np.allclose(out, left_bright(image))  # mirrored back, the mirrored prediction agrees
    lopsided = lambda im: np.tile(np.linspace(0, 1, im.shape[1], dtype=np.float32), (im.shape[0], 1))  # noqa: E731
    assert np.allclose(Refined(lopsided, Refine(flip=True))(image), 0.5)  # a left-right bias is averaged out


def test_combine_applies_the_main_object_before_sharpening():
    prob = _two_objects()
    out = combine(prob, None, Refine(main_object=True, sharpen=3.0))
    assert out[30:36, 45:55].max() == 0 and out[10, 10] > prob[10, 10]
    with pytest.raises(ValueError, match="mirrored"):
        combine(prob, None, Refine(flip=True))


def test_refine_round_trips_through_its_dict_and_refuses_nonsense():
    r = Refine(flip=True, main_object=True, sharpen=2.0)
    assert Refine.from_dict(r.to_dict()) == r and r.name == "flip+main_object+sharpen 2" and r.cost == 2
    assert Refine.from_dict(None) == Refine() and Refine().name == "none" and Refine().cost == 1
    with pytest.raises(ValueError, match="unknown keys"):
        Refine.from_dict({"flop": True})
    with pytest.raises(ValueError, match="sharpen must be positive"):
        Refine(sharpen=0)


def test_refine_grid_is_every_combination_once():
    grid = refine_grid([False, True], [False], [1.0, 2.0, 2])
    assert grid == [Refine(False, False, 1.0), Refine(False, False, 2.0), Refine(True, False, 1.0), Refine(True, False, 2.0)]
    with pytest.raises(ValueError, match="at least one choice"):
        refine_grid([False], [], [1.0])


def test_val_chooses_the_main_object_by_iou_then_sharpening_by_mae_and_flips_only_if_it_pays(data_dir):
    rows = manifest_for(data_dir)  # masks: the top 30 % of rows is foreground

    def soft_with_a_distractor(image):
        """The foreground at 0.7 (soft), plus a false object in the bottom right corner."""
        h, w = image.shape[:2]
        out = np.full((h, w), 0.1, np.float32)
        out[: int(round(h * 0.3))] = 0.7
        out[-4:, -4:] = 0.9
        return out

    choices = refine_grid([False, True], [False, True], [1.0, 2.0])
    chosen, by_choice = choose_refine(rows, soft_with_a_distractor, choices, max_pixels=10**6)
    assert set(by_choice) == {c.name for c in choices}
    assert by_choice["main_object"]["iou"] > by_choice["none"]["iou"]
    assert by_choice["main_object+sharpen 2"]["iou"] == by_choice["main_object"]["iou"]
    assert by_choice["main_object+sharpen 2"]["mae"] < by_choice["main_object"]["mae"]
    # Flipping this (symmetric) prediction changes nothing, so the single-pass choice wins.
    assert by_choice["flip+main_object"]["iou"] == by_choice["main_object"]["iou"]
    assert chosen == Refine(flip=False, main_object=True, sharpen=2.0)
    # With a tolerance as large as the main object's gain, the plain mask is as good, and MAE decides.
    gain = by_choice["main_object"]["iou"] - by_choice["none"]["iou"]
    relaxed, _ = choose_refine(rows, soft_with_a_distractor, choices, 10**6, tolerance=gain)
    assert relaxed.cost == 1 and relaxed.sharpen == 2.0
    assert choose_refine(rows, soft_with_a_distractor, [Refine()], 10**6) == (Refine(), {})  # nothing to choose
    with pytest.raises(ValueError, match="val split is empty"):
        choose_refine(rows.iloc[:0], soft_with_a_distractor, choices, 10**6)


def test_keep_main_object_scores_better_where_a_second_object_is_a_false_positive():
    truth = np.zeros((40, 60), np.float32)
    truth[5:25, 5:30] = 1.0
    prob = _two_objects()
    assert iou_dice(keep_main_object(prob), truth)[0] > iou_dice(prob, truth)[0]
