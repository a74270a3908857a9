"""Tried as a new user would, on real photo/mask pairs: validation names the images stored rotated 90
degrees, and the served model cuts real photos out.

Uses DAVIS frames (real video frames with hand-drawn masks) from the data folder beside the project
(tests.helpers.SHARED_DATA), copied into a temporary folder; the data is never part of the project.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from bgremoval.cli import main as cli
from bgremoval.data.masks import load_mask
from bgremoval.data.validation import Thresholds, add_derived_columns, run_suite, summarise
from bgremoval.images import load_rgb
from bgremoval.scoring.metrics import iou_dice
from bgremoval.scoring.stock import RembgModel
from bgremoval.weights import find_u2netp_onnx
from tests.helpers import SHARED_DATA, manifest_for, served_folder

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
    t = Thresholds(min_size=64, fg_min=0.001, fg_max=0.98, split_tolerance=0.2, split_fractions=splits,
                   min_contrast=8, near_copy_distance=20, suspect_above=None)
    report = summarise(run_suite(add_derived_columns(manifest_for(folder, splits), t), t, None))

    assert not report["success"]
    by_guard = {f["guards"]: {u["name"] for u in f.get("unexpected", [])} for f in report["failures"]}
    assert by_guard == {
        "image and mask have the same aspect ratio, within a pixel (catches photos stored rotated, and crops)": rotated,
    }, report["failures"]


@pytest.mark.slow
def test_stock_u2netp_served_cuts_out_real_photos_as_rembg_does(tmp_path):
    """The served path (onnxruntime, the project's preprocessing, `bgremoval predict`) on real photos:
    cut-outs at each photo's size that match the hand-drawn masks, and rembg's own run of the same graph."""
    onnx = find_u2netp_onnx(None)
    model = served_folder(tmp_path / "served", onnx, runtime="onnxruntime", size=320)
    photos = tmp_path / "photos"
    photos.mkdir()
    names = [f"{seq}_00010" for seq in ("blackswan", "cows", "car-roundabout")]
    for name in names:
        shutil.copy(DAVIS / "images" / f"{name}.jpg", photos)
    assert cli(["predict", "--model", str(model), "--quiet", str(photos), str(tmp_path / "out")]) == 0
    for name in names:
        image = load_rgb(photos / f"{name}.jpg", 10**8)
        cut = Image.open(tmp_path / "out" / f"{name}.png")
        assert cut.mode == "RGBA" and cut.size == (854, 480)
        rgba = np.asarray(cut)
        # The photo's own colours where the alpha is sure; the subject's estimated colours only under soft alpha.
        same = (rgba[..., :3] == image).all(axis=2)
        assert same[rgba[..., 3] == 255].mean() > 0.99 and same[rgba[..., 3] == 0].mean() > 0.99
        truth = load_mask(DAVIS / "masks" / f"{name}.png", 10**8) / 255
        assert iou_dice(rgba[..., 3] / 255, truth)[0] > 0.85, name
    rembg = RembgModel(onnx)  # rembg's own run of the same graph: its resizing, its normalisation
    image = load_rgb(photos / f"{names[0]}.jpg", 10**8)
    ours, theirs = np.asarray(Image.open(tmp_path / "out" / f"{names[0]}.png"))[..., 3] / 255, rembg(image)
    assert iou_dice(ours, theirs >= 0.5)[0] > 0.95 and np.abs(ours - theirs).mean() < 0.01
