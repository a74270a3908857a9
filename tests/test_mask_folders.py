"""Folders as public data sets ship them, through prepare's manifest and the validation suite: 1-bit masks,
scaled JPEG masks (with and without prepare.resize_masks), photos stored rotated, a colour and an empty
mask; and every reader sees a scaled mask at its photo's size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bgremoval.data.manifest import build_manifest, pair_files
from bgremoval.data.masks import MaskChoices, load_mask
from bgremoval.data.split import assign_groups, split_groups
from bgremoval.data.validation import (Thresholds, add_derived_columns, failure_message, mask_lines, mask_summary,
                                       run_suite, summarise)
from tests.helpers import SPLITS, write_pair

THRESHOLDS = Thresholds(min_size=16, fg_min=0.01, fg_max=0.95, split_tolerance=0.15, split_fractions=SPLITS,
                       min_contrast=8, near_copy_distance=20, suspect_above=None)
NAMES = [f"seq{g}_{f:03d}" for g in range(6) for f in range(4)]
FG = 7 / 24  # write_pair's masks: the top 7 of 24 rows


def folder_of(tmp_path: Path, save_mask=None) -> Path:
    """24 pairs of 32x24 photos; each mask (0/255, top rows foreground) re-saved by save_mask(alpha, path)."""
    folder = tmp_path / "data"
    for i, name in enumerate(NAMES):
        _, mask = write_pair(folder, name, seed=i)
        if save_mask is not None:
            alpha = np.asarray(Image.open(mask))
            mask.unlink()
            save_mask(alpha, mask.with_suffix(""))
    return folder


def prepared(folder: Path, jpeg: str = "threshold", resize: bool = False) -> pd.DataFrame:
    """The manifest the prepare stage writes for a folder, with these mask choices."""
    df = build_manifest(pair_files(folder), 10**6, MaskChoices(jpeg=jpeg, resize=resize))
    df["group"] = assign_groups(df["name"], r"^(.*)_\d+$")
    df["split"] = split_groups(df["group"], SPLITS, 0)
    return df


def validate(df: pd.DataFrame) -> dict:
    return summarise(run_suite(add_derived_columns(df, THRESHOLDS), THRESHOLDS, None))


def named(report: dict) -> dict[str, set[str]]:
    """guard text -> names of the offending pairs."""
    return {f["guards"]: {u["name"] for u in f.get("unexpected", [])} for f in report["failures"]}


def one_bit(alpha, stem):
    Image.fromarray(alpha > 0).save(stem.with_suffix(".png"))


def half_size_jpeg(alpha, stem):
    Image.fromarray(alpha, "L").resize((16, 12), Image.Resampling.BILINEAR).save(stem.with_suffix(".jpg"), quality=85)


def rotate_photos(folder: Path, names) -> None:
    for name in names:  # stored rotated relative to its mask, as a careless export does
        p = folder / "images" / f"{name}.png"
        Image.open(p).transpose(Image.Transpose.ROTATE_90).save(p)


def test_a_folder_of_1_bit_masks_validates(tmp_path):
    df = prepared(folder_of(tmp_path, one_bit))
    assert set(df["mask_kind"]) == {"1-bit"} and set(df["mask_mode"]) == {"1"}
    assert df["fg_fraction"].to_numpy() == pytest.approx(FG)
    report = validate(df)
    assert report["success"], failure_message(report)


def test_scaled_jpeg_masks_validate_with_resize_masks_and_fail_naming_the_switch_without(tmp_path):
    folder = folder_of(tmp_path, half_size_jpeg)
    on = prepared(folder, resize=True)
    assert set(on["mask_kind"]) == {"jpeg-threshold"} and set(on["mask_fit"]) == {"scaled"} and on["mask_resize"].all()
    report = validate(on)
    assert report["success"], failure_message(report)
    for _, row in on.iterrows():  # every reader gets the mask at its photo's size
        alpha = load_mask(row, 10**6)
        assert alpha.shape == (24, 32) and set(np.unique(alpha)) <= {0, 255}
        assert alpha.mean() / 255 == pytest.approx(FG, abs=0.05)  # half a row is lost at half size

    off = prepared(folder, resize=False)
    report = validate(off)
    assert not report["success"]
    (guard,) = named(report)  # one expectation fails, naming every pair
    assert "prepare.resize_masks" in guard and named(report)[guard] == set(NAMES)
    message = failure_message(report)
    assert "prepare.resize_masks: true" in message and "seq0_000.jpg" in message
    assert "mask_width=16" in message and "width=32" in message
    with pytest.raises(ValueError, match="set prepare.resize_masks: true"):
        load_mask(off.iloc[0], 10**6)  # a stage forced past validation still says what to do


@pytest.mark.parametrize("layout", ["same size", "scaled JPEG, resize_masks on"])
def test_photos_stored_rotated_fail_naming_exactly_those_pairs(tmp_path, layout):
    scaled = layout.startswith("scaled")
    folder = folder_of(tmp_path, half_size_jpeg if scaled else None)
    rotated = {"seq1_002", "seq3_000", "seq4_003"}
    rotate_photos(folder, rotated)
    report = validate(prepared(folder, resize=scaled))
    assert not report["success"]
    assert named(report) == {
        "image and mask have the same aspect ratio, within a pixel (catches photos stored rotated, and crops)": rotated}
    message = failure_message(report)
    assert all(f"{name}.png" in message for name in rotated)


def test_a_colour_mask_and_an_empty_mask_are_named_with_what_to_do(tmp_path):
    folder = folder_of(tmp_path)
    colour = np.zeros((24, 32, 3), np.uint8)
    colour[:7] = (200, 40, 40)
    Image.fromarray(colour).save(folder / "masks" / "seq2_001.png")
    Image.new("L", (32, 24), 0).save(folder / "masks" / "seq5_002.png")
    report = validate(prepared(folder))
    assert not report["success"]
    by_guard = named(report)
    kind_guard = next(g for g in by_guard if "colour mask" in g)
    fg_guard = next(g for g in by_guard if "no empty" in g)
    assert by_guard == {kind_guard: {"seq2_001"}, fg_guard: {"seq5_002"}}
    message = failure_message(report)
    assert "masks/seq2_001.png" in message and "mask_kind=colour" in message and "palette PNG" in message
    assert "masks/seq5_002.png" in message and "fg_fraction=0.0" in message and "remove the pair" in message


def test_the_report_counts_kinds_and_measures_jpeg_noise(tmp_path):
    folder = folder_of(tmp_path, half_size_jpeg)
    Image.fromarray(np.where(np.arange(24)[:, None] < 7, 1, 0).astype(np.uint8).repeat(32, 1), "L").save(
        folder / "masks" / "seq0_000.png")
    (folder / "masks" / "seq0_000.jpg").unlink()
    df = prepared(folder, jpeg="soft", resize=True)
    summary = mask_summary(df)
    assert summary["kinds"] == {"jpeg-soft": 23, "binary-01": 1}
    assert summary["fit"] == {"scaled": 23, "same": 1} and summary["resized"] == 23
    jpeg = summary["jpeg"]
    assert jpeg["masks"] == 23 and 0 < jpeg["noise_mean"] <= jpeg["noise_max"] < 0.5
    assert jpeg["noisiest"][0]["noise"] == jpeg["noise_max"] and len(jpeg["noisiest"]) == 5
    assert any("23 JPEG masks: compression noise" in line for line in mask_lines(summary))
    assert df.set_index("name").loc["seq0_000", "fg_fraction"] == pytest.approx(FG)  # 0/1, not 255x too small


def top_rows(image: np.ndarray) -> np.ndarray:
    """A predictor of write_pair's masks: the top 7 of 24 rows."""
    out = np.zeros(image.shape[:2])
    out[: round(image.shape[0] * FG)] = 1.0
    return out


def test_augment_scoring_and_reports_read_scaled_masks_at_the_photos_size(tmp_path):
    from bgremoval.data.training_set import load_pair
    from bgremoval.scoring.reports import worst_grid
    from bgremoval.scoring.score import score

    df = prepared(folder_of(tmp_path, half_size_jpeg), resize=True).head(4)
    image, mask = load_pair(df.iloc[0], 64, 10**6)
    assert image.shape[:2] == mask.shape == (24, 32)
    table, _ = score(df, top_rows, 10**6)
    assert (table["iou"] > 0.8).all()  # the resized masks line up with the photos (half a row lost at half size)
    assert worst_grid(table, df, top_rows, 2, 10**6).size[0] > 0


@pytest.mark.slow
def test_exports_choices_read_scaled_masks_at_the_photos_size(tmp_path):
    from bgremoval.export.choose import choose_refine  # imports TensorFlow
    from bgremoval.serving.refine import Refine

    df = prepared(folder_of(tmp_path, half_size_jpeg), resize=True).head(4)
    choices = [Refine.none(), Refine(flip=False, main_object=True, sharpen=1.0)]
    _, summaries = choose_refine(df, top_rows, choices, 10**6, 0.0)
    assert all(m["iou"] > 0.8 for m in summaries.values())
