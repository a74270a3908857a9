"""The GX suite: a clean manifest passes; each expectation fails on its own bad case, naming the files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bgremoval.data.validation import (RESULT_PAGE, Thresholds, add_derived_columns, failure_message, result_page,
                                      run_suite, summarise)
from tests.helpers import SPLITS, manifest_for, write_pair

THRESHOLDS = Thresholds(min_size=16, fg_min=0.01, fg_max=0.95, split_tolerance=0.15, split_fractions=SPLITS,
                       min_contrast=8, near_copy_distance=20, suspect_above=None)


def validate(df: pd.DataFrame, t: Thresholds = THRESHOLDS, docs=None) -> dict:
    return summarise(run_suite(add_derived_columns(df, t), t, docs))


def failed_guards(report: dict) -> dict[str, set[str]]:
    """guard text -> names of the offending pairs."""
    return {f["guards"]: {u["name"] for u in f.get("unexpected", [])} for f in report["failures"]}


def test_clean_data_passes_and_builds_data_docs(data_dir, tmp_path):
    report = validate(manifest_for(data_dir), docs=tmp_path / "docs")
    assert report["success"], report["failures"]
    assert report["evaluated"] == 19
    assert (tmp_path / "docs" / "index.html").exists()
    # Its result page under a name that does not change from run to run (validation.json names it).
    stable = result_page(tmp_path / "docs")
    assert stable == tmp_path / "docs" / RESULT_PAGE
    target = stable.read_text().split("url=")[1].split('"')[0]
    assert target.startswith("validations/") and (stable.parent / target).is_file()
    assert "Evaluated Expectations" in (stable.parent / target).read_text()
    assert result_page(tmp_path / "nothing") is None


def _first_train(df):
    return df.index[df["split"] == "train"][0]


def _orphan_image(folder, df):
    (folder / "masks" / "seq0_000.png").unlink()
    return "seq0_000", "every image has a mask"


def _orphan_mask(folder, df):
    (folder / "images" / "seq0_001.png").unlink()
    return "seq0_001", "every mask has an image"


def _truncated_image(folder, df):
    p = folder / "images" / "seq1_000.png"
    p.write_bytes(p.read_bytes()[:60])
    return "seq1_000", "every image decodes"


def _bad_mask_bytes(folder, df):
    (folder / "masks" / "seq1_001.png").write_bytes(b"GIF89a nonsense")
    return "seq1_001", "every mask decodes"


def _cmyk_image(folder, df):
    Image.new("CMYK", (32, 24)).save(folder / "images" / "seq2_000.jpg")
    (folder / "images" / "seq2_000.png").unlink()
    return "seq2_000", "images are RGB, RGBA or greyscale"


def _colour_mask(folder, df):
    colour = np.zeros((24, 32, 3), np.uint8)
    colour[:8] = (200, 30, 30)  # a red subject: a colour mask that is not a palette
    Image.fromarray(colour).save(folder / "masks" / "seq2_001.png")
    return "seq2_001", "a colour mask that is not a palette is ambiguous"


def _rotated_image(folder, df):
    p = folder / "images" / "seq3_000.png"
    Image.open(p).transpose(Image.Transpose.ROTATE_90).save(p)
    return "seq3_000", "same aspect ratio"


def _short_mask(folder, df):
    p = folder / "masks" / "seq3_001.png"
    Image.open(p).crop((0, 0, 32, 20)).save(p)
    return "seq3_001", "same aspect ratio"


def _half_size_mask(folder, df):
    p = folder / "masks" / "seq3_002.png"
    Image.open(p).resize((16, 12)).save(p)  # scaled, not wrong: resized only with the switch on
    return "seq3_002", "only with prepare.resize_masks: true"


def _narrow_pair(folder, df):
    write_pair(folder, "seq4_000", size=(12, 24), seed=99)
    return "seq4_000", "px wide"


def _flat_pair(folder, df):
    write_pair(folder, "seq4_001", size=(32, 10), seed=98)
    return "seq4_001", "px high"


def _empty_mask(folder, df):
    Image.new("L", (32, 24), 0).save(folder / "masks" / "seq5_000.png")
    return "seq5_000", "no empty"


def _full_mask(folder, df):
    Image.new("L", (32, 24), 255).save(folder / "masks" / "seq5_001.png")
    return "seq5_001", "no empty, no all-foreground"


CASES = [_orphan_image, _orphan_mask, _truncated_image, _bad_mask_bytes, _cmyk_image, _colour_mask,
         _rotated_image, _short_mask, _half_size_mask, _narrow_pair, _flat_pair, _empty_mask, _full_mask]


@pytest.mark.parametrize("break_it", CASES, ids=[c.__name__.strip("_") for c in CASES])
def test_each_file_expectation_fails_on_its_case(data_dir, break_it):
    name, guard = break_it(data_dir, None)
    report = validate(manifest_for(data_dir))
    assert not report["success"]
    hits = {g: names for g, names in failed_guards(report).items() if guard in g}
    assert hits, f"no failure whose guard mentions {guard!r}: {failed_guards(report)}"
    assert all(names == {name} for names in hits.values()), hits
    assert name in failure_message(report)


def test_duplicate_content_across_splits_is_leakage(data_dir):
    df = manifest_for(data_dir)
    i_train = _first_train(df)
    i_test = df.index[df["split"] == "test"][0]
    df.loc[i_test, "content_hash"] = df.loc[i_train, "content_hash"]
    names = failed_guards(validate(df))["no image content appears in two splits, the reference and unlabelled photos among them (leakage)"]
    assert names == {df.loc[i_train, "name"], df.loc[i_test, "name"]}


def test_group_across_splits_is_leakage(data_dir):
    df = manifest_for(data_dir)
    group = df.loc[_first_train(df), "group"]
    moved = df.index[df["group"] == group][-1]
    df.loc[moved, "split"] = "test"  # e.g. a hand-written split file that splits a sequence
    names = failed_guards(validate(df))["no group (e.g. video sequence) crosses splits (leakage)"]
    assert names == set(df.loc[df["group"] == group, "name"])


def test_missing_split_and_unknown_split_are_reported(data_dir):
    df = manifest_for(data_dir)
    df.loc[0, "split"] = None
    df.loc[1, "split"] = "holdout"
    names = failed_guards(validate(df))["every pair has a split"]
    assert df.loc[1, "name"] in names


def test_absent_split_and_skewed_fractions_fail(data_dir):
    df = manifest_for(data_dir)
    df.loc[df["split"] == "val", "split"] = "train"
    failures = failed_guards(validate(df))
    assert any("every requested split is present" in g for g in failures)
    skew = next(g for g in failures if "share is within" in g)
    assert failures[skew] == set(df.loc[df["split"] == "train", "name"])


def test_report_is_json_and_message_says_what_to_do(data_dir):
    import json

    _rotated_image(data_dir, None)
    report = validate(manifest_for(data_dir))
    json.dumps(report)
    msg = failure_message(report)
    assert "seq3_000.png" in msg and "width=24" in msg and "mask_width=32" in msg
    assert "dvc repro" in msg


def test_a_draft_in_val_or_test_fails_and_the_share_of_drafts_is_reported(data_dir):
    from bgremoval.data.validation import mask_summary

    df = manifest_for(data_dir)
    assert set(df["mask_origin"]) == {"person"}
    name = df.loc[df["split"] == "test", "name"].iloc[0]
    df.loc[df["name"] == name, "mask_origin"] = "draft"
    report = validate(df)
    assert not report["success"]
    assert failed_guards(report) == {next(g for g in failed_guards(report) if "person drew or checked" in g): {name}}
    assert mask_summary(df)["origins"] == {"person": len(df) - 1, "draft": 1, "draft_share": 1 / len(df)}
    # a draft in train is fine
    df.loc[df["name"] == name, "mask_origin"] = "person"
    df.loc[df.index[df["split"] == "train"][0], "mask_origin"] = "draft"
    assert validate(df)["success"]
