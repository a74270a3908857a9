"""Suspect masks: a mask a person drew that disagrees with a model's mask of its photo far more than the others do
is listed first, in validate's report (a warning, never a failure) and by `bgremoval suspects`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bgremoval.cli import main as cli
from bgremoval.data.validation import Thresholds, ValidateConfig, add_derived_columns, run_suite, scorable, summarise
from bgremoval.labelling import folders
from bgremoval.labelling.suspects import flag_above, rank
from stages.validate import suspect_masks
from tests.helpers import PARAMS, SHARED_DATA, SPLITS, manifest_for

DAVIS = SHARED_DATA / "davis_train"
real_photos = pytest.mark.skipif(not DAVIS.is_dir(), reason=f"real photos not available at {DAVIS}")
SWAPPED = ("cows_00016", "dog_00008")  # their masks trade places


def test_the_flag_is_a_modified_z_score_over_the_folders_own_disagreements():
    values = pd.Series([0.05, 0.06, 0.07, 0.08, 0.10, 0.12, 0.60])
    median, mad = 0.08, 0.02  # |x - 0.08| = .03 .02 .01 0 .02 .04 .52: their median is 0.02
    assert flag_above(values, 3.5) == pytest.approx(median + 3.5 * mad / 0.6745)
    assert flag_above(values, 0) == pytest.approx(median)
    assert flag_above(pd.Series([0.2, 0.9, 0.95]), 3.5) == 1.0  # never above 1 - IoU's own top
    assert flag_above(pd.Series(dtype=float), 3.5) == 1.0


def test_the_ranking_puts_the_most_suspect_first_and_breaks_ties_by_name():
    table = pd.DataFrame({"name": ["b", "a", "c"], "disagreement": [0.3, 0.3, 0.9], "image_path": "i",
                          "mask_path": "m", "model": "u2netp"})
    ranked = rank(table)
    assert ranked["name"].tolist() == ["c", "a", "b"] and ranked["rank"].tolist() == [1, 2, 3]


def _davis_folder(tmp_path):
    folder = tmp_path / "frames"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for seq in ("blackswan", "cows", "dog", "libby"):
        for f in (0, 8, 16):
            name = f"{seq}_{f:05d}"
            shutil.copy(DAVIS / "images" / f"{name}.jpg", folder / "images")
            shutil.copy(DAVIS / "masks" / f"{name}.png", folder / "masks")
    a, b = (folder / "masks" / f"{n}.png" for n in SWAPPED)
    a.rename(folder / "tmp.png")
    b.rename(a)
    (folder / "tmp.png").rename(b)
    return folder


@real_photos
@pytest.mark.slow
def test_swapped_masks_top_the_report_which_warns_and_does_not_fail(tmp_path):
    folder = _davis_folder(tmp_path)
    manifest = manifest_for(folder)
    params = {**PARAMS, "validate": {**PARAMS["validate"], "suspects": {"model": "u2netp", "z": 3.5, "worst": 4}},
              "prepare": {**PARAMS["prepare"], "max_pixels": 10_000_000}, "paths": {"reports": str(tmp_path / "reports")}}
    reports = tmp_path / "reports"
    reports.mkdir()
    found = suspect_masks(manifest, cfg=ValidateConfig.from_params(params))

    assert set(found["ranking"]["name"][:2]) == set(SWAPPED)
    assert {f["name"] for f in found["flagged"]} == set(SWAPPED)  # and no clean pair
    assert found["scored"] == 12 and [w["rank"] for w in found["worst"]] == [1, 2, 3, 4]
    assert pd.read_csv(reports / "suspect_masks.csv")["name"][:2].tolist() == found["ranking"]["name"][:2].tolist()
    with Image.open(reports / "suspect_masks.png") as sheet:  # 4 rows of photo, its mask, the model's
        assert sheet.width > sheet.height / 4 * 2.5

    ranking = found["ranking"]
    manifest["mask_disagreement"] = manifest["mask_path"].map(dict(zip(ranking["mask_path"], ranking["disagreement"])))
    t = Thresholds(min_size=64, fg_min=0.001, fg_max=0.98, split_tolerance=0.5, split_fractions=SPLITS,
                   suspect_above=found["flag_above"], min_contrast=8, near_copy_distance=20)
    report = summarise(run_suite(add_derived_columns(manifest, t), t, tmp_path / "docs"))
    assert report["success"], report["failures"]  # a report, not a gate
    (warning,) = report["warnings"]
    assert warning["severity"] == "warning" and {u["name"] for u in warning["unexpected"]} == set(SWAPPED)
    page = next((tmp_path / "docs" / "validations").rglob("*.html")).read_text()
    assert "mask_disagreement" in page  # in the Data Docs too
    json.dumps(report, default=str)


@real_photos
@pytest.mark.slow
def test_the_command_ranks_a_folders_masks_and_leaves_the_drafts_out(tmp_path, capsys):
    folder = _davis_folder(tmp_path)
    draft = folders.mask_path(folder, "libby_00000")  # a draft copied into masks/ by hand is still a draft
    with Image.open(draft) as img:
        folders.write_draft(draft, np.asarray(img.convert("L")), "u2netp")
    (folder / "images" / "broken_00000.jpg").write_bytes(b"not a jpeg")
    shutil.copy(folder / "masks" / "blackswan_00000.png", folder / "masks" / "broken_00000.png")

    assert cli(["suspects", str(folder), "--model", "u2netp", "--worst", "3", "--quiet"]) == 1  # one unreadable
    out, err = capsys.readouterr()
    assert "skipped broken_00000: " in err and "broken_00000.jpg" in err
    ranking = pd.read_csv(folder / "suspects.csv")
    assert len(ranking) == 11 and "libby_00000" not in set(ranking["name"])
    assert set(ranking["name"][:2]) == set(SWAPPED)
    assert "2 far above the rest" in out and all(n in out for n in SWAPPED)
    assert f"bgremoval label push {folder} --suspects" in out
    assert (folder / "suspects_worst.png").is_file()


def test_only_pairs_a_person_drew_with_a_photo_that_shows_something_are_scored(tmp_path):
    from tests.helpers import write_pair

    folder = tmp_path / "data"
    for g in range(3):
        write_pair(folder, f"s{g}_000", seed=g)
    Image.new("RGB", (32, 24), (1, 1, 1)).save(folder / "images" / "s1_000.png")  # blank
    draft = folder / "masks" / "s2_000.png"
    with Image.open(draft) as img:
        folders.write_draft(draft, np.asarray(img), "toy")
    manifest = manifest_for(folder, {"train": 1.0})
    assert scorable(manifest, PARAMS["validate"]["min_contrast"])["name"].tolist() == ["s0_000"]
