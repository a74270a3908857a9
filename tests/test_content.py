"""What validation sees in a photo: blank photos are named, and near-copies (the same picture resized, re-encoded,
cropped a few per cent, turned grey or recoloured) are found while distinct photos are not; prepare keeps
near-copies in one group, and validation fails where a split file separates them."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance, ImageOps

from bgremoval.data.content import contrast, copies_in, hash_distance, merge_groups, near_copies, perceptual_hash
from bgremoval.data.validation import Thresholds, add_derived_columns, run_suite, summarise
from tests.helpers import PARAMS, SPLITS, manifest_for, sample_photo, write_pair

MAX_DISTANCE = PARAMS["prepare"]["near_copy_distance"]
MIN_CONTRAST = PARAMS["validate"]["min_contrast"]
T = Thresholds(min_size=16, fg_min=0.01, fg_max=0.95, split_tolerance=0.5, split_fractions=SPLITS,
               min_contrast=MIN_CONTRAST, near_copy_distance=MAX_DISTANCE, suspect_above=None)


def _reencoded(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _cropped(img: Image.Image, share: float) -> Image.Image:
    """`share` of the width and height taken off, half on each side."""
    w, h = img.size
    dx, dy = round(w * share / 2), round(h * share / 2)
    return img.crop((dx, dy, w - dx, h - dy))


COPIES = {
    "resized to half": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR),
    "resized up 1.5x": lambda im: im.resize((im.width * 3 // 2, im.height * 3 // 2), Image.Resampling.BICUBIC),
    "re-encoded at JPEG quality 30": lambda im: _reencoded(im, 30),
    "cropped 3 %": lambda im: _cropped(im, 0.03),
    "grey": lambda im: ImageOps.grayscale(im).convert("RGB"),
    "brighter and more saturated": lambda im: ImageEnhance.Color(ImageEnhance.Brightness(im).enhance(1.15)).enhance(1.3),
}


def _photos() -> dict[str, Image.Image]:
    """Distinct real pictures: the two photos, and the four quarters of each (a quarter of a photo is another
    picture of the same scene, the hard case for a hash)."""
    out = {}
    for name in ("china", "flower"):
        img = Image.fromarray(sample_photo(f"{name}.jpg"))
        out[name] = img
        w, h = img.size
        for i, (x, y) in enumerate(itertools.product((0, w // 2), (0, h // 2))):
            out[f"{name}_q{i}"] = img.crop((x, y, x + w // 2, y + h // 2))
    return out


@pytest.mark.parametrize("how", COPIES)
def test_a_near_copy_is_within_the_distance(how):
    for name in ("china", "flower"):
        original = Image.fromarray(sample_photo(f"{name}.jpg"))
        d = hash_distance(perceptual_hash(original), perceptual_hash(COPIES[how](original)))
        assert d <= MAX_DISTANCE, f"{name} {how}: {d} bits"


def test_distinct_photos_are_not_near_copies():
    hashes = {name: perceptual_hash(img) for name, img in _photos().items()}
    for (a, ha), (b, hb) in itertools.combinations(hashes.items(), 2):
        assert hash_distance(ha, hb) > MAX_DISTANCE, (a, b, hash_distance(ha, hb))
    # and the search over a table finds none of them
    assert list(near_copies(pd.Series(hashes), MAX_DISTANCE)) == []


def test_the_search_finds_each_pair_once_with_its_distance():
    photos = _photos()
    hashes = {name: perceptual_hash(img) for name, img in photos.items()}
    hashes["china_grey"] = perceptual_hash(COPIES["grey"](photos["china"]))
    hashes["flower_small"] = perceptual_hash(COPIES["resized to half"](photos["flower"]))
    hashes["no photo"] = None  # a photo that did not decode has no hash
    series = pd.Series(hashes)
    found = {(a, b) for a, b, _ in near_copies(series, MAX_DISTANCE, chunk=3)}  # several chunks
    assert found == {("china", "china_grey"), ("flower", "flower_small")}
    for a, b, d in near_copies(series, MAX_DISTANCE):
        assert d == hash_distance(hashes[a], hashes[b])


def test_merged_groups_keep_linked_rows_together():
    groups = pd.Series(["a", "b", "c", "d", "e"], index=[10, 11, 12, 13, 14])
    merged = merge_groups(groups, [(10, 12, 3), (12, 14, 5)])  # a~c, c~e: one group, named by the first
    assert merged.tolist() == ["a", "b", "a", "d", "a"]


def test_contrast_of_blank_and_real_photos():
    assert contrast(Image.new("RGB", (64, 48), (2, 2, 2))) == 0
    rng = np.random.default_rng(0)
    dark = Image.fromarray(rng.integers(0, 3, (48, 64, 3), dtype=np.uint8))  # every value at most 2
    assert contrast(dark) < MIN_CONTRAST
    assert contrast(Image.fromarray(sample_photo("china.jpg"))) > 100


def _folder_with(tmp_path, photos: dict[str, Image.Image], masks: dict[str, np.ndarray] | None = None):
    folder = tmp_path / "data"
    for g in range(6):  # the usual distinct noise pairs, so every split has pairs
        for f in range(3):
            write_pair(folder, f"seq{g}_{f:03d}", size=(48, 32), seed=g * 10 + f)
    for name, img in photos.items():
        img.save(folder / "images" / f"{name}.png")
        mask = (masks or {}).get(name)
        if mask is None:
            mask = np.zeros((img.height, img.width), np.uint8)
            mask[img.height // 4: 3 * img.height // 4, img.width // 4: 3 * img.width // 4] = 255
        Image.fromarray(mask, "L").save(folder / "masks" / f"{name}.png")
    return folder


def test_a_blank_photo_is_named_once_and_an_empty_mask_on_a_real_photo_too(tmp_path):
    black = Image.fromarray(np.random.default_rng(1).integers(0, 3, (64, 96, 3), dtype=np.uint8))
    china = Image.fromarray(sample_photo("china.jpg")).resize((96, 64))
    folder = _folder_with(tmp_path, {"black_000": black, "china_000": china},
                          {"black_000": np.full((64, 96), 255, np.uint8), "china_000": np.zeros((64, 96), np.uint8)})
    report = summarise(run_suite(add_derived_columns(manifest_for(folder), T), T, None))
    failed = {f["guards"]: f for f in report["failures"]}
    blank = next(f for g, f in failed.items() if g.startswith("every photo shows something"))
    assert [u["name"] for u in blank["unexpected"]] == ["black_000"]
    assert blank["unexpected"][0]["values"]["image_contrast"] < MIN_CONTRAST  # the number that tripped it
    assert blank["unexpected"][0]["values"]["fg_fraction"] == 1.0
    coverage = next(f for g, f in failed.items() if g.startswith("foreground covers"))
    assert [u["name"] for u in coverage["unexpected"]] == ["china_000"]  # the blank photo is not named again


def test_prepare_keeps_near_copies_in_one_group_and_validate_fails_on_a_split_that_separates_them(tmp_path):
    china = Image.fromarray(sample_photo("china.jpg")).resize((192, 128))
    flower = Image.fromarray(sample_photo("flower.jpg")).resize((192, 128))
    copy = _reencoded(_cropped(china, 0.03), 40).resize((150, 100))
    folder = _folder_with(tmp_path, {"china_000": china, "flower_000": flower, "shop_017": copy})
    manifest = manifest_for(folder)
    pairs = copies_in(manifest, MAX_DISTANCE, MIN_CONTRAST)
    names = {frozenset((manifest.at[a, "name"], manifest.at[b, "name"])) for a, b, _ in pairs}
    assert names == {frozenset(("china_000", "shop_017"))}
    merged = merge_groups(manifest["group"], pairs)
    assert merged[manifest["name"] == "china_000"].item() == merged[manifest["name"] == "shop_017"].item()

    # A split that separates them (as a split file may): both files are named, with their distance.
    manifest["split"] = np.where(manifest["name"] == "shop_017", "test", manifest["split"])
    manifest.loc[manifest["name"] == "china_000", "split"] = "train"
    report = summarise(run_suite(add_derived_columns(manifest, T), T, None))
    leak = next(f for f in report["failures"] if f["guards"].startswith("no photo has a near-copy"))
    rows = {u["name"]: u for u in leak["unexpected"]}
    assert set(rows) == {"china_000", "shop_017"}
    assert rows["china_000"]["values"]["near_copy_of"].endswith("images/shop_017.png")
    assert rows["shop_017"]["values"]["near_copy_of"].endswith("images/china_000.png")
    assert 0 <= rows["china_000"]["values"]["near_copy_distance"] <= MAX_DISTANCE
    assert rows["shop_017"]["values"]["near_copy_split"] == "train"

    # In one split they are no leak.
    manifest.loc[manifest["name"] == "shop_017", "split"] = "train"
    report = summarise(run_suite(add_derived_columns(manifest, T), T, None))
    assert not any(f["guards"].startswith("no photo has a near-copy") for f in report["failures"])
