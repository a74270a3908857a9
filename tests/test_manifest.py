"""Building the manifest: pairing by base name, orphans kept, decode problems recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bgremoval.data.manifest import COLUMNS, build_manifest, pair_files, resolve_source
from bgremoval.data.masks import MaskChoices
from tests.helpers import write_pair


CHOICES = MaskChoices(jpeg="threshold", resize=False)


def test_pairs_by_base_name_and_keeps_orphans(tmp_path):
    write_pair(tmp_path, "a_1", ext=".jpg")
    write_pair(tmp_path, "b_1")
    (tmp_path / "masks" / "b_1.png").rename(tmp_path / "masks" / "c_1.png")  # b has no mask, c no image
    (tmp_path / "images" / ".DS_Store").write_bytes(b"junk")  # hidden files are ignored
    (tmp_path / "images" / "readme.txt").write_text("ignored")
    pairs = {name: (img and img.name, m and m.name) for name, img, m in pair_files(tmp_path)}
    assert pairs == {"a_1": ("a_1.jpg", "a_1.png"), "b_1": ("b_1.png", None), "c_1": (None, "c_1.png")}


def test_two_images_with_one_base_name_is_an_error(tmp_path):
    write_pair(tmp_path, "x_1", ext=".jpg")
    write_pair(tmp_path, "x_1", ext=".png")
    with pytest.raises(ValueError, match=r"x_1\.jpg and .*x_1\.png share the base name"):
        pair_files(tmp_path)


def test_missing_folder_says_what_layout_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="images/ and masks/"):
        pair_files(tmp_path / "nope")


def test_manifest_rows_describe_each_pair(tmp_path):
    write_pair(tmp_path, "a_1", size=(32, 24), fg=0.25)
    df = build_manifest(pair_files(tmp_path), 10**6, CHOICES)
    assert list(df.columns) == COLUMNS
    row = df.iloc[0]
    assert (row["width"], row["height"], row["channels"]) == (32, 24, 3)
    assert row["mask_kind"] == "binary" and row["mask_mode"] == "L"
    assert row["mask_fit"] == "same" and not row["mask_resize"] and np.isnan(row["mask_noise"])
    assert row["fg_fraction"] == pytest.approx(0.25)
    assert len(row["content_hash"]) == 64
    assert row["image_error"] is None and row["mask_error"] is None


def test_decode_problems_are_recorded_not_raised(tmp_path):
    write_pair(tmp_path, "good_1")
    write_pair(tmp_path, "bad_1")
    (tmp_path / "images" / "bad_1.png").write_bytes(b"")
    (tmp_path / "masks" / "good_1.png").write_text("not a png")
    df = build_manifest(pair_files(tmp_path), 10**6, CHOICES).set_index("name")
    assert "empty" in df.loc["bad_1", "image_error"]
    assert "cannot be decoded" in df.loc["good_1", "mask_error"]


def test_source_sample_means_the_sample_folder(tmp_path):
    assert resolve_source("sample", tmp_path / "s") == tmp_path / "s"
    assert resolve_source(str(tmp_path / "mine"), tmp_path / "s") == tmp_path / "mine"


def test_a_file_linking_outside_the_data_folder_is_refused(tmp_path):
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    write_pair(data, "a_1")
    secret = elsewhere / "secret.png"
    elsewhere.mkdir()
    secret.write_bytes((data / "images" / "a_1.png").read_bytes())
    (data / "images" / "b_1.png").symlink_to(secret)
    (data / "masks" / "b_1.png").symlink_to(Path("..") / ".." / "elsewhere" / "secret.png")
    with pytest.raises(ValueError, match=r"link outside the data folder .*b_1\.png -> .*secret\.png.*Copy the files"):
        pair_files(data)


def test_links_inside_the_data_folder_and_a_linked_images_folder_are_fine(tmp_path):
    store = tmp_path / "store"
    write_pair(store, "a_1")
    data = tmp_path / "data"
    data.mkdir()
    (data / "images").symlink_to(store / "images")  # a whole folder on another disk: the user's choice
    (data / "masks").mkdir()
    (data / "masks" / "a_1.png").symlink_to(store / "masks" / "a_1.png")
    with pytest.raises(ValueError, match="masks"):  # a single file linking out is still refused
        pair_files(data)
    (data / "masks" / "a_1.png").unlink()
    (data / "masks" / "a_1.png").write_bytes((store / "masks" / "a_1.png").read_bytes())
    (data / "masks" / "b_1.png").symlink_to("a_1.png")  # a link within the folder
    assert {name for name, _, _ in pair_files(data)} == {"a_1", "b_1"}


def test_prepares_choices_are_recorded_per_row(tmp_path):
    """A JPEG mask's kind carries prepare.jpeg_masks and its noise; a scaled mask is resized only with
    prepare.resize_masks; a rotated photo is recorded as a different fit either way."""
    write_pair(tmp_path, "same_1")
    write_pair(tmp_path, "half_1", size=(32, 24))
    mask = tmp_path / "masks" / "half_1.png"
    Image.open(mask).resize((16, 12)).save(mask.with_suffix(".jpg"), quality=80)
    mask.unlink()
    write_pair(tmp_path, "turned_1", size=(32, 24))
    photo = tmp_path / "images" / "turned_1.png"
    Image.open(photo).transpose(Image.Transpose.ROTATE_90).save(photo)
    for jpeg, resize in (("threshold", True), ("soft", False)):
        df = build_manifest(pair_files(tmp_path), 10**6, MaskChoices(jpeg=jpeg, resize=resize)).set_index("name")
        assert df["mask_kind"].to_dict() == {"half_1": f"jpeg-{jpeg}", "same_1": "binary", "turned_1": "binary"}
        assert df["mask_fit"].to_dict() == {"half_1": "scaled", "same_1": "same", "turned_1": "different"}
        assert df["mask_resize"].to_dict() == {"half_1": resize, "same_1": False, "turned_1": False}
        assert df["mask_resize"].dtype == bool
        assert 0 <= df.loc["half_1", "mask_noise"] < 0.5 and df["mask_noise"].isna().sum() == 2
        assert df.loc["half_1", "fg_fraction"] == pytest.approx(0.3, abs=0.1)


def test_a_pair_missing_a_side_has_no_fit(tmp_path):
    write_pair(tmp_path, "a_1")
    write_pair(tmp_path, "b_1")
    (tmp_path / "masks" / "b_1.png").unlink()
    df = build_manifest(pair_files(tmp_path), 10**6, MaskChoices(jpeg="threshold", resize=True)).set_index("name")
    assert df.loc["a_1", "mask_fit"] == "same" and pd.isna(df.loc["b_1", "mask_fit"])
    assert not df.loc["b_1", "mask_resize"]


def test_a_drafts_origin_is_known_wherever_it_lies(tmp_path):
    from bgremoval.data.manifest import pair_files, with_drafts
    from bgremoval.labelling import folders

    folder = tmp_path / "shop"
    write_pair(folder, "drawn_1")
    write_pair(folder, "copied_1")
    folders.write_draft(folder / "masks" / "copied_1.png", np.full((24, 32), 255, np.uint8), "u2net")  # into masks/ by hand
    (folder / "images" / "only_1.png").write_bytes((folder / "images" / "drawn_1.png").read_bytes())
    folders.write_draft(folders.draft_path(folder, "only_1"), np.full((24, 32), 200, np.uint8), "u2net")
    folders.write_draft(folders.draft_path(folder, "drawn_1"), np.zeros((24, 32), np.uint8), "u2net")
    plain = build_manifest(pair_files(folder), 10**7, CHOICES).set_index("name")
    assert plain["mask_origin"].fillna("no mask").to_dict() == {"copied_1": "draft", "drawn_1": "person",
                                                                "only_1": "no mask"}
    drafted = build_manifest(with_drafts(pair_files(folder), folder), 10**7, CHOICES).set_index("name")
    assert drafted["mask_origin"].to_dict() == {"copied_1": "draft", "drawn_1": "person", "only_1": "draft"}
    assert drafted.loc["only_1", "mask_path"].endswith("drafts/only_1.png")
    assert drafted.loc["drawn_1", "mask_path"].endswith("masks/drawn_1.png")  # a person's mask wins over a draft
