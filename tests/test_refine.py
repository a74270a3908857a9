"""Refining the predicted mask: what each refinement does, and how val chooses among them."""

from __future__ import annotations

import numpy as np
import pytest

from bgremoval.export.choose import RefineChoices, choose_refine
from bgremoval.scoring.metrics import iou_dice
from bgremoval.serving.refine import Refine, Refined, combine, keep_main_object, mirrored_prediction, refined, sharpen
from tests.helpers import manifest_for

NONE = Refine.none()


def test_sharpening_moves_soft_pixels_away_from_one_half_and_keeps_what_is_foreground():
    p = np.linspace(0, 1, 101, dtype=np.float32)
    s = sharpen(p, 2.0)
    assert s[0] == 0 and s[50] == pytest.approx(0.5) and s[100] == 1
    assert np.all(np.diff(s) > 0)  # the ranking of pixels (and so max F) is kept
    assert np.all(np.abs(s - 0.5)[1:-1] > np.abs(p - 0.5)[1:-1] - 1e-7)  # more decisive
    assert np.all(np.abs(s - 0.5)[1:50] > np.abs(p - 0.5)[1:50])
    assert np.array_equal(s >= 0.5, p >= 0.5)  # IoU at 0.5 is unchanged
    assert s[25] == pytest.approx(0.25**2 / (0.25**2 + 0.75**2))
    assert sharpen(p, 1.0) is p
    assert np.all(np.abs(sharpen(p, 0.5) - 0.5)[1:50] < np.abs(p - 0.5)[1:50])  # k < 1 softens


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
    assert kept.sum() == pytest.approx(prob[4:25, 5:30].sum())
    one = np.zeros_like(prob)
    one[10:20, 10:20] = 1.0
    assert np.array_equal(keep_main_object(one), one)  # a single object is left alone
    faint = np.full_like(prob, 0.4)
    assert np.array_equal(keep_main_object(faint), faint)  # no foreground at all: nothing to prefer


def test_the_main_object_is_the_one_with_the_most_foreground_not_the_widest():
    prob = np.zeros((30, 30), np.float32)
    prob[0:30, 0:10] = 0.45     # the widest region, but soft: no pixel at 0.5
    prob[5:10, 20:25] = 0.9     # small and sure
    kept = keep_main_object(prob)
    assert kept[:, :10].max() == 0 and np.array_equal(kept[5:10, 20:25], prob[5:10, 20:25])


def test_flip_averages_with_the_mirrored_images_mask():
    calls = []

    def left_bright(image):  # a "network" that sees foreground where the red channel is bright
        calls.append(image.copy())
        return (image[..., 0] > 127).astype(np.float32) * 0.8

    image = np.zeros((4, 6, 3), np.uint8)
    image[:, :2, 0] = 255
    out = Refined(left_bright, Refine(True, False, 1.0))(image)
    assert len(calls) == 2 and any(np.array_equal(c, image[:, ::-1]) for c in calls)
    assert np.allclose(out, left_bright(image))  # mirrored back, the mirrored prediction agrees
    lopsided = lambda im: np.tile(np.linspace(0, 1, im.shape[1], dtype=np.float32), (im.shape[0], 1))  # noqa: E731
    assert np.allclose(Refined(lopsided, Refine(True, False, 1.0))(image), 0.5)  # a left-right bias is averaged out
    assert np.allclose(mirrored_prediction(lopsided, image), lopsided(image)[:, ::-1])


def test_no_refinement_is_the_predictor_itself_and_a_refined_one_keeps_its_size():
    class Net:
        size = 64

        def __call__(self, image):
            return np.full(image.shape[:2], 0.7, np.float32)

    net = Net()
    assert refined(net, NONE) is net
    sharper = refined(net, Refine(False, False, 3.0))
    assert isinstance(sharper, Refined) and sharper.size == 64
    assert np.allclose(sharper(np.zeros((3, 5, 3), np.uint8)), 0.7**3 / (0.7**3 + 0.3**3))


def test_combine_applies_the_main_object_before_sharpening():
    prob = _two_objects()
    out = combine(prob, None, Refine(False, True, 3.0))
    assert out[30:36, 45:55].max() == 0 and out[10, 10] > prob[10, 10]
    assert out[4, 10] < prob[4, 10]  # the soft rim is kept, and sharpened towards 0
    assert np.array_equal(combine(prob, None, NONE), prob)
    with pytest.raises(ValueError, match="mirrored"):
        combine(prob, None, Refine(True, False, 1.0))


def test_refine_round_trips_through_its_dict_and_refuses_nonsense():
    r = Refine(flip=True, main_object=True, sharpen=2.0)
    assert Refine.from_dict(r.to_dict()) == r and r.name == "flip+main_object+sharpen 2" and r.cost == 2
    assert Refine.from_dict({"flip": 0, "main_object": 1, "sharpen": 1}) == Refine(False, True, 1.0)
    assert NONE == Refine(False, False, 1.0) and NONE.name == "none" and NONE.cost == 1
    assert Refine(False, False, 1.5).name == "sharpen 1.5"
    with pytest.raises(ValueError, match="keys \\['flop'\\]; expected flip, main_object, sharpen"):
        Refine.from_dict({"flop": True})
    with pytest.raises(ValueError, match="expected flip, main_object, sharpen"):
        Refine.from_dict({"flip": True, "main_object": False})  # no defaults: every key is written out
    with pytest.raises(ValueError, match="sharpen must be positive"):
        Refine(False, False, 0)


def test_refine_grid_is_every_combination_once():
    grid = RefineChoices([False, True], [False], [1.0, 2.0, 2], 0.0).grid()
    assert grid == [Refine(False, False, 1.0), Refine(False, False, 2.0), Refine(True, False, 1.0), Refine(True, False, 2.0)]
    with pytest.raises(ValueError, match="at least one choice"):
        RefineChoices([False], [], [1.0], 0.0).grid()


def test_val_chooses_the_main_object_by_iou_then_sharpening_by_mae_and_flips_only_if_it_pays(data_dir):
    rows = manifest_for(data_dir)  # masks: the top 30 % of rows is foreground

    def soft_with_a_distractor(image):
        """The foreground at 0.7 (soft), plus a false object in the bottom right corner."""
        h, w = image.shape[:2]
        out = np.full((h, w), 0.1, np.float32)
        out[: int(round(h * 0.3))] = 0.7
        out[-4:, -4:] = 0.9
        return out

    choices = RefineChoices([False, True], [False, True], [1.0, 2.0], 0.0).grid()
    chosen, by_choice = choose_refine(rows, soft_with_a_distractor, choices, 10**6, 0.0)
    assert set(by_choice) == set(choices)
    main, plain = Refine(False, True, 1.0), NONE
    main_sharp = Refine(False, True, 2.0)
    assert by_choice[main]["iou"] > by_choice[plain]["iou"]
    assert by_choice[main_sharp]["iou"] == by_choice[main]["iou"]
    assert by_choice[main_sharp]["mae"] < by_choice[main]["mae"]
    # Flipping this (symmetric) prediction changes nothing, so the single-pass choice wins.
    assert by_choice[Refine(True, True, 1.0)]["iou"] == by_choice[main]["iou"]
    assert chosen == main_sharp
    # With a tolerance as large as the main object's gain, the plain mask is as good, and MAE decides.
    gain = by_choice[main]["iou"] - by_choice[plain]["iou"]
    relaxed, _ = choose_refine(rows, soft_with_a_distractor, choices, 10**6, gain)
    assert relaxed.cost == 1 and relaxed.sharpen == 2.0
    assert choose_refine(rows, soft_with_a_distractor, [NONE], 10**6, 0.0) == (NONE, {})  # nothing to choose
    with pytest.raises(ValueError, match="val split is empty"):
        choose_refine(rows.iloc[:0], soft_with_a_distractor, choices, 10**6, 0.0)


def test_val_chooses_flipping_when_it_pays_for_its_second_pass(data_dir):
    rows = manifest_for(data_dir)

    def shifted(image):
        """The foreground band, but only on the left half: mirrored, it covers the right half too."""
        h, w = image.shape[:2]
        out = np.zeros((h, w), np.float32)
        out[: int(round(h * 0.3)), : w // 2] = 1.0
        return out

    chosen, by_choice = choose_refine(rows, shifted, [NONE, Refine(True, False, 1.0)], 10**6, 0.0)
    # At 0.5 the averaged mask covers the whole band: IoU doubles, so the second pass pays.
    assert by_choice[Refine(True, False, 1.0)]["iou"] == pytest.approx(1.0)
    assert by_choice[NONE]["iou"] == pytest.approx(0.5) and chosen == Refine(True, False, 1.0)
    # Within a tolerance that covers the gain, the single pass is as good and cheaper.
    assert choose_refine(rows, shifted, [NONE, Refine(True, False, 1.0)], 10**6, 0.5)[0] == NONE


def test_keep_main_object_scores_better_where_a_second_object_is_a_false_positive():
    truth = np.zeros((40, 60), np.float32)
    truth[5:25, 5:30] = 1.0
    prob = _two_objects()
    assert iou_dice(keep_main_object(prob), truth)[0] > iou_dice(prob, truth)[0]
