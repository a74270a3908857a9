"""Tried as a new user would: real photo/mask pairs, some images stored rotated 90 degrees.

Uses frames of ../shared/data/davis_train (real video frames with hand-drawn masks) copied into a
temporary folder; the data is never part of the project.
"""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from bgremoval.validation import Thresholds, add_derived_columns, run_suite, summarise
from tests.conftest import SHARED_DATA, manifest_for

DAVIS = SHARED_DATA / "davis_train"
pytestmark = pytest.mark.skipif(not DAVIS.is_dir(), reason=f"real photos not available at {DAVIS}")


def test_rotated_photos_fail_validation_listing_exactly_those_pairs(tmp_path):
    folder = tmp_path / "photos"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for seq in ("blackswan", "cows", "dog", "libby"):
        for f in range(0, 40, 8):
            name = f"{seq}_{f:05d}"
            shutil.copy(DAVIS / "images" / f"{name}.jpg", folder / "images")
            shutil.copy(DAVIS / "masks" / f"{name}.png", folder / "masks")
    rotated = {"cows_00008", "dog_00032", "libby_00000"}
    for name in rotated:  # stored rotated relative to its mask, as a careless export does
        p = folder / "images" / f"{name}.jpg"
        Image.open(p).transpose(Image.Transpose.ROTATE_90).save(p, quality=95)

    splits = {"train": 0.5, "val": 0.25, "test": 0.25}
    t = Thresholds(min_size=64, fg_min=0.001, fg_max=0.98, split_tolerance=0.2, split_fractions=splits)
    report = summarise(run_suite(add_derived_columns(manifest_for(folder, splits), splits), t, None))

    assert not report["success"]
    by_guard = {f["guards"]: {u["name"] for u in f.get("unexpected", [])} for f in report["failures"]}
    assert set(by_guard) == {
        "image and mask have the same width (catches rotated or resized pairs)",
        "image and mask have the same height",
    }, report["failures"]
    assert all(names == rotated for names in by_guard.values())
