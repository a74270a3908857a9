"""Augmentation properties: masks stay aligned and in range, background swap keeps the mask, runs repeat."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgremoval.data.augment import AugmentConfig, Magnitudes, Probabilities, augment_pair, composite, resize_pair
from bgremoval.data.balance import bin_labels, oversample_plan, positive_weight, target_weights
from bgremoval.data.shards import read_records, write_shards
from bgremoval.data.training_set import Balance, TrainingSetConfig, build
from tests.helpers import manifest_for, write_pair

MAG = Magnitudes(crop_scale_min=0.4, rotate_deg=20, perspective=0.1, brightness=0.3, contrast=0.3,
                 saturation=0.3, hue=0.05, blur_radius=1.5, noise_std=8, jpeg_quality_min=30)
GEOMETRIC = Probabilities(flip=0.5, crop=1, rotate=1, perspective=1, bg_swap=0,
                          brightness=0, contrast=0, saturation=0, hue=0, blur=0, noise=0, jpeg=0)
ALL = Probabilities(flip=0.5, crop=1, rotate=1, perspective=1, bg_swap=1,
                    brightness=1, contrast=1, saturation=1, hue=1, blur=1, noise=1, jpeg=1)


def _config(p: Probabilities, size=32, strength=1.0) -> AugmentConfig:
    return AugmentConfig(size=size, strength=strength, p=p, m=MAG, texture_share=0.5)


def _pair(seed: int, h: int = 40, w: int = 56):
    """A random blob mask, and an image whose colour *is* its mask (so alignment is checkable)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx, r = rng.uniform(8, h - 8), rng.uniform(8, w - 8), rng.uniform(5, 14)
    mask = (np.clip(r - np.hypot(yy - cy, xx - cx), 0, 1) * 255).astype(np.uint8)
    return np.repeat(mask[..., None], 3, axis=2), mask


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), size=st.sampled_from([24, 32, 48]), strength=st.floats(0, 1.5))
def test_geometric_transforms_keep_image_and_mask_aligned(seed, size, strength):
    image, mask = _pair(seed)
    out_img, out_mask = augment_pair(np.random.default_rng(seed), image, mask, _config(GEOMETRIC, size, strength))
    assert out_img.shape == (size, size, 3) and out_mask.shape == (size, size)
    # The image was its mask: after the same warp, every channel still equals the mask exactly.
    for c in range(3):
        np.testing.assert_array_equal(out_img[..., c], out_mask)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_all_transforms_move_the_mask_only_with_the_geometry(seed):
    """With every transform on (background swap onto a donor, colour, blur, noise, JPEG), the mask is uint8 at
    the output size and exactly the mask the geometric warp alone gives: no photometric step touches it."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    _, mask = _pair(seed)
    donor = (rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), np.zeros((64, 64), np.uint8))
    out_img, out_mask = augment_pair(np.random.default_rng(seed), image, mask, _config(ALL), donor)
    _, geometric_mask = augment_pair(np.random.default_rng(seed), image, mask, _config(GEOMETRIC))
    assert out_img.dtype == np.uint8 and out_mask.dtype == np.uint8
    assert out_img.shape == (32, 32, 3) and out_mask.shape == (32, 32)
    np.testing.assert_array_equal(out_mask, geometric_mask)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_background_swap_keeps_the_foreground_and_changes_only_outside_it(seed):
    rng = np.random.default_rng(seed)
    fg = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    alpha = rng.choice(np.array([0, 0, 77, 255, 255], np.uint8), (24, 24))
    bg = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    out = composite(fg, alpha, bg)
    solid, empty = alpha == 255, alpha == 0
    np.testing.assert_array_equal(out[solid], fg[solid])  # inside the mask: untouched
    np.testing.assert_array_equal(out[empty], bg[empty])  # outside: the new background


def test_background_swap_does_not_change_the_mask():
    image, mask = _pair(3)
    p_swap = Probabilities(**{**GEOMETRIC.__dict__, "bg_swap": 1.0})
    p_none = GEOMETRIC
    _, with_swap = augment_pair(np.random.default_rng(9), image, mask, _config(p_swap))
    _, without = augment_pair(np.random.default_rng(9), image, mask, _config(p_none))
    np.testing.assert_array_equal(with_swap, without)


def test_photometric_changes_touch_the_image_only():
    image, mask = _pair(5)
    photo = Probabilities(**{**ALL.__dict__, "flip": 0, "crop": 0, "rotate": 0, "perspective": 0, "bg_swap": 0})
    out_img, out_mask = augment_pair(np.random.default_rng(1), image, mask, _config(photo, size=56))
    off = Probabilities(**{k: 0.0 for k in photo.__dict__})
    ref_img, ref_mask = augment_pair(np.random.default_rng(1), image, mask, _config(off, size=56))
    np.testing.assert_array_equal(out_mask, ref_mask)
    assert (out_img != ref_img).any()


def test_balancing_reaches_requested_bin_weights():
    rng = np.random.default_rng(0)
    fractions = pd.Series(np.concatenate([rng.uniform(0.0, 0.05, 60), rng.uniform(0.05, 0.2, 25), rng.uniform(0.2, 0.9, 10)]))
    bins = bin_labels(fractions, [0, 0.05, 0.2, 1.0])
    for requested in ("equal", {"0-0.05": 1, "0.05-0.2": 2, "0.2-1": 1}):
        weights = target_weights(bins, requested)
        plan = oversample_plan(bins, weights, copies=2, max_repeat=10, seed=0)
        got = pd.Series([bins[i] for i in plan]).value_counts(normalize=True)
        for b, w in weights.items():
            assert got[b] == pytest.approx(w, abs=0.02)
        # Nothing is dropped: every image keeps at least its copies.
        assert pd.Series(plan).value_counts().reindex(bins.index).min() >= 2


def test_balancing_caps_repeats_of_a_tiny_bin():
    bins = bin_labels(pd.Series([0.01] * 50 + [0.5]), [0, 0.05, 1.0])
    plan = oversample_plan(bins, target_weights(bins, "equal"), copies=1, max_repeat=4, seed=0)
    assert plan.count(50) == 4


def test_category_column_splits_bins():
    labels = bin_labels(pd.Series([0.01, 0.01]), [0, 0.05, 1], category=pd.Series(["shoe", "bag"]))
    assert labels.tolist() == ["shoe|0-0.05", "bag|0-0.05"]


def test_unknown_bin_weight_is_named():
    bins = bin_labels(pd.Series([0.01, 0.3]), [0, 0.05, 1])
    with pytest.raises(ValueError, match="0.05-0.5"):
        target_weights(bins, {"0.05-0.5": 1})


def test_positive_weight_is_background_over_foreground():
    masks = [np.full((2, 2), 255, np.uint8), np.zeros((2, 6), np.uint8)]
    share, weight = positive_weight(masks)
    assert share == pytest.approx(0.25) and weight == pytest.approx(3.0)


def test_same_seed_gives_byte_identical_shards(tmp_path):
    image, mask = _pair(1)

    def records(seed):
        for k in range(6):
            yield f"x#{k}", *augment_pair(np.random.default_rng([seed, k]), image, mask, _config(ALL), (image, mask))

    a = write_shards(records(7), tmp_path / "a", "train", shard_size=4)
    b = write_shards(records(7), tmp_path / "b", "train", shard_size=4)
    c = write_shards(records(8), tmp_path / "c", "train", shard_size=4)
    assert [p.name for p in a] == ["train-00000.tfrecord", "train-00001.tfrecord"]
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert [p.read_bytes() for p in a] != [p.read_bytes() for p in c]
    names = [r[0] for r in read_records(a)]
    assert names == [f"x#{k}" for k in range(6)]


def test_val_test_copies_are_plain_resizes():
    image, mask = _pair(2)
    img, msk = resize_pair(image, mask, 32)
    assert img.shape == (32, 32, 3) and msk.shape == (32, 32)
    np.testing.assert_array_equal(img[..., 0], msk)  # same resize for both


def _tiny_manifest(folder):
    """6 groups x 2 frames of 32x24 pairs: train has three groups with a small foreground and one with a
    large one; val and test have one group each."""
    for g, fg in enumerate([0.1, 0.1, 0.1, 0.6, 0.3, 0.3]):
        for f in range(2):
            write_pair(folder, f"s{g}_{f}", fg=fg, seed=10 * g + f)
    manifest = manifest_for(folder)
    manifest["split"] = manifest["group"].map({"s0": "train", "s1": "train", "s2": "train", "s3": "train",
                                               "s4": "val"}).fillna("test")
    return manifest


def test_build_writes_balanced_train_shards_and_resized_val_test(tmp_path):
    manifest = _tiny_manifest(tmp_path / "data")
    balance = Balance(edges=[0, 0.3, 1.0], weights="equal", max_repeat=4)
    out = tmp_path / "augmented"
    cfg = TrainingSetConfig(augment=_config(ALL, size=16), balance=balance, copies=1, shard_size=8, seed=0,
                            max_pixels=10**6)
    stats, table, picture = build(manifest, cfg=cfg, out_dir=out)

    by_split = {s: set(manifest.loc[manifest["split"] == s, "name"]) for s in ("train", "val", "test")}
    assert all(by_split.values())
    records = {s: read_records(sorted(out.glob(f"{s}-*.tfrecord"))) for s in ("train", "val", "test")}
    assert stats["n"] == {s: len(r) for s, r in records.items()} | {"draft": 0}  # no drafts: no draft shards
    assert stats["shards"] == {s: len(list(out.glob(f"{s}-*.tfrecord"))) for s in ("train", "val", "test")}
    # Train copies come from train images only, each kept at least once; val and test are one resize each.
    assert {name.split("#")[0] for name, _, _ in records["train"]} == by_split["train"]
    for s in ("val", "test"):
        assert sorted(name for name, _, _ in records[s]) == sorted(by_split[s])
    for _, image, mask in records["train"] + records["val"] + records["test"]:
        assert image.shape == (16, 16, 3) and mask.shape == (16, 16)

    share, weight = positive_weight([m for _, _, m in records["train"]])
    assert stats["size"] == 16
    assert stats["fg_pixel_share"] == pytest.approx(share) and stats["pos_weight"] == pytest.approx(weight)
    assert weight > 1  # foreground is the minority of train pixels

    assert list(table.columns) == ["bin", "before", "requested", "after"]
    for column in ("before", "requested", "after"):
        assert table[column].sum() == pytest.approx(1.0)
    assert table["bin"].tolist() == ["0-0.3", "0.3-1"]
    assert table["before"].tolist() == pytest.approx([0.75, 0.25])
    assert table["requested"].tolist() == [0.5, 0.5]
    assert table["after"].tolist() == pytest.approx([0.5, 0.5])  # the large-foreground bin oversampled 3x
    assert stats["n"]["train"] == 12

    shown = min(24, stats["n"]["train"])
    assert picture.size == (6 * 160, -(-shown // 6) * (160 + 14))


def test_build_is_reproducible_for_a_seed(tmp_path):
    manifest = _tiny_manifest(tmp_path / "data")
    balance = Balance(edges=[0, 0.3, 1.0], weights="equal", max_repeat=4)

    def shard_bytes(seed, name):
        cfg = TrainingSetConfig(augment=_config(ALL, size=16), balance=balance, copies=1, shard_size=8, seed=seed,
                                max_pixels=10**6)
        build(manifest, cfg=cfg, out_dir=tmp_path / name)
        return [p.read_bytes() for p in sorted((tmp_path / name).glob("train-*.tfrecord"))]

    assert shard_bytes(3, "a") == shard_bytes(3, "b") != shard_bytes(4, "c")
