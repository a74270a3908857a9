"""Photos beside the labelled pairs: reference photos of other kinds (with masks) and unlabelled photos
(without): how prepare adds them to the manifest, what validation asks of them, and the gate's guard
against forgetting."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from bgremoval.data.manifest import add_rows, build_manifest, pair_files, unlabelled_files
from bgremoval.data.masks import MaskChoices
from bgremoval.data.split import REFERENCE, UNLABELLED, assign_groups
from bgremoval.data.validation import Thresholds, add_derived_columns, run_suite, summarise
from bgremoval.registry.gate import CHALLENGER, CHAMPION, Reference, decide
from tests.helpers import SPLITS, manifest_for, write_pair

CHOICES = MaskChoices(jpeg="threshold", resize=False)


def _with(manifest, folder: Path, split: str, files):
    extra = build_manifest(files(folder), 10**6, CHOICES)
    return add_rows(manifest, extra, split, assign_groups(extra["name"], r"^(.*)_\d+$"))


def _validate(manifest):
    t = Thresholds(min_size=8, fg_min=0.001, fg_max=0.98, split_tolerance=0.3, split_fractions=SPLITS,
                   min_contrast=8, near_copy_distance=20, suspect_above=None)
    return summarise(run_suite(add_derived_columns(manifest, t), t, None))


def test_unlabelled_photos_join_the_manifest_without_masks_and_validate(data_dir, tmp_path):
    for i in range(3):
        write_pair(tmp_path / "photos", f"street_{i}", seed=100 + i)
    shutil.rmtree(tmp_path / "photos" / "masks")
    rows = unlabelled_files(tmp_path / "photos")
    assert [name for name, _, mask in rows] == ["street_0", "street_1", "street_2"] and all(m is None for *_, m in rows)
    manifest = _with(manifest_for(data_dir), tmp_path / "photos", UNLABELLED, unlabelled_files)
    unlabelled = manifest[manifest["split"] == UNLABELLED]
    assert len(unlabelled) == 3 and unlabelled["mask_path"].isna().all() and unlabelled["content_hash"].notna().all()
    report = _validate(manifest)
    assert report["success"], report["failures"]


def test_an_unlabelled_photo_that_is_also_a_labelled_one_is_named(data_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(data_dir / "images" / "seq0_000.png", photos / "copy_0.png")  # the same photo, renamed
    manifest = _with(manifest_for(data_dir), photos, UNLABELLED, unlabelled_files)
    report = _validate(manifest)
    (leak,) = [f for f in report["failures"] if "two splits" in f["guards"]]
    assert {u["name"] for u in leak["unexpected"]} == {"seq0_000", "copy_0"}


def test_reference_photos_are_checked_like_labelled_ones(data_dir, tmp_path):
    write_pair(tmp_path / "ref", "cat_0", seed=7)
    _, mask = write_pair(tmp_path / "ref", "cat_1", seed=8)
    Image.new("L", Image.open(mask).size, 0).save(mask)  # an empty mask
    manifest = _with(manifest_for(data_dir), tmp_path / "ref", REFERENCE, pair_files)
    assert (manifest["split"] == REFERENCE).sum() == 2
    report = _validate(manifest)
    (empty,) = [f for f in report["failures"] if "foreground covers" in f["guards"]]
    assert [u["name"] for u in empty["unexpected"]] == ["cat_1"]
    assert all("share" not in f["guards"] for f in report["failures"])  # shares count the labelled pairs only


def test_an_empty_unlabelled_folder_is_a_clear_error(tmp_path):
    (tmp_path / "none").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        unlabelled_files(tmp_path / "none")


def test_a_candidate_that_forgets_other_kinds_is_not_promoted_whatever_its_test_score():
    gate = {"min_delta": 0.002, "require_beats_baseline": False}
    forgets = decide("iou", 0.95, None, **gate, baseline=0.90,
                     reference=Reference(candidate=0.60, stock=0.64, max_loss=0.01))
    assert forgets.alias == CHALLENGER and "reference photos" in forgets.reason and "0.0400 worse" in forgets.reason
    within = decide("iou", 0.95, None, **gate, baseline=0.90,
                    reference=Reference(candidate=0.635, stock=0.64, max_loss=0.01))
    assert within.alias == CHAMPION
    lower_is_better = decide("mae", 0.02, None, **gate, baseline=0.03,
                             reference=Reference(candidate=0.06, stock=0.04, max_loss=0.01))
    assert lower_is_better.alias == CHALLENGER
