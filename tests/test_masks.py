"""Reading masks: every common encoding is read as what it means and recorded as its kind; a pair's mask is
read from its manifest row (the JPEG choice, a scaled mask resized); what cannot be read without guessing
is named."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bgremoval.data.masks import (KINDS, MaskChoices, describe_mask, is_jpeg, load_mask, mask_fit,
                                  resize_mask)
from bgremoval.images import ImageReadError, open_image

# A 32x24 mask whose top third is foreground: the alpha every encoding below must give back.
TRUTH = np.zeros((24, 32), np.uint8)
TRUTH[:8] = 255
THRESHOLD, SOFT = MaskChoices(jpeg="threshold", resize=False), MaskChoices(jpeg="soft", resize=False)


def _palette(indices: np.ndarray) -> Image.Image:
    img = Image.frombytes("P", (indices.shape[1], indices.shape[0]), indices.astype(np.uint8).tobytes())
    img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [224, 224, 192] * 252)  # VOC-like colours
    return img


def _with_void_border(indices: np.ndarray) -> np.ndarray:
    out = indices.copy()
    out[7, :] = 255  # VOC's "void" outline around objects: not background
    return out


ENCODINGS = {  # name: (image to save, file suffix, kind)
    "8-bit 0/255": (lambda: Image.fromarray(TRUTH, "L"), ".png", "binary"),
    "8-bit 0/1": (lambda: Image.fromarray(TRUTH // 255, "L"), ".png", "binary-01"),
    "1-bit": (lambda: Image.fromarray(TRUTH > 0), ".png", "1-bit"),
    "1-bit bmp": (lambda: Image.fromarray(TRUTH > 0), ".bmp", "1-bit"),
    "palette 0/1": (lambda: _palette(TRUTH // 255), ".png", "palette"),
    "palette, two objects": (lambda: _palette(np.where(TRUTH > 0, np.arange(32) // 16 + 1, 0)), ".png", "palette"),
    "palette, void border": (lambda: _palette(_with_void_border(TRUTH // 255)), ".png", "palette"),
    "16-bit 0/65535": (lambda: Image.fromarray(TRUTH.astype(np.uint16) * 257), ".png", "16-bit"),
    "16-bit 0/1": (lambda: Image.fromarray((TRUTH // 255).astype(np.uint16)), ".png", "16-bit"),
    "16-bit 0/255": (lambda: Image.fromarray(TRUTH.astype(np.uint16)), ".png", "16-bit"),
    "RGBA alpha": (lambda: Image.fromarray(np.dstack([np.full((24, 32, 3), 90, np.uint8), TRUTH]), "RGBA"),
                   ".png", "alpha"),
    "LA alpha": (lambda: Image.fromarray(np.dstack([np.full((24, 32), 255, np.uint8), TRUTH]), "LA"), ".png", "alpha"),
    "RGB, equal channels": (lambda: Image.fromarray(np.stack([TRUTH] * 3, axis=-1)), ".png", "binary"),
    "RGBA opaque, grey channels": (lambda: Image.fromarray(
        np.dstack([TRUTH, TRUTH, TRUTH, np.full((24, 32), 255, np.uint8)]), "RGBA"), ".png", "binary"),
    "webp lossless": (lambda: Image.fromarray(TRUTH, "L"), ".webp", "binary"),
    "JPEG grey": (lambda: Image.fromarray(TRUTH, "L"), ".jpg", "jpeg-threshold"),
    "JPEG RGB": (lambda: Image.fromarray(np.stack([TRUTH] * 3, axis=-1)), ".jpg", "jpeg-threshold"),
}


def _saved(tmp_path, name, suffix):
    make, _, _ = ENCODINGS[name]
    path = tmp_path / f"mask{suffix}"
    make().save(path, **({"lossless": True} if suffix == ".webp" else {}))
    return path


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_each_encoding_gives_the_alpha_and_its_kind(tmp_path, name):
    _, suffix, kind = ENCODINGS[name]
    path = _saved(tmp_path, name, suffix)
    info = describe_mask(open_image(path, 10**6), is_jpeg(path), THRESHOLD)
    assert info.kind == kind and kind in KINDS
    assert (info.width, info.height) == (32, 24)
    assert info.fg_fraction == pytest.approx(1 / 3, abs=0.01)  # 0/1 is not 255 times too small
    row = {"mask_path": str(path), "mask_kind": info.kind, "mask_resize": False, "width": 32, "height": 24}
    np.testing.assert_array_equal(load_mask(row, 10**6), TRUTH)
    np.testing.assert_array_equal(load_mask(path, 10**6) >= 128, TRUTH > 0)  # a bare path: the content's kind


def test_soft_grey_and_soft_alpha_keep_their_values(tmp_path):
    ramp = np.tile(np.linspace(0, 255, 32).round().astype(np.uint8), (24, 1))
    Image.fromarray(ramp, "L").save(tmp_path / "soft.png")
    Image.fromarray(np.dstack([np.zeros((24, 32, 3), np.uint8), ramp]), "RGBA").save(tmp_path / "cut.png")
    for name, kind in (("soft.png", "soft"), ("cut.png", "alpha")):
        info = describe_mask(open_image(tmp_path / name, 10**6), False, THRESHOLD)
        assert info.kind == kind and info.fg_fraction == pytest.approx(ramp.mean() / 255)
        np.testing.assert_array_equal(load_mask(tmp_path / name, 10**6), ramp)


def test_a_16_bit_soft_mask_is_scaled_to_8_bits(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 32).round().astype(np.uint16), (24, 1))
    Image.fromarray(ramp).save(tmp_path / "m.png")
    alpha = load_mask(tmp_path / "m.png", 10**6)
    assert alpha.dtype == np.uint8 and alpha[0, 0] == 0 and alpha[0, -1] == 255
    np.testing.assert_allclose(alpha, ramp / 257, atol=0.5)


def test_jpeg_masks_are_thresholded_or_kept_soft_and_their_noise_is_measured(tmp_path):
    yy, xx = np.mgrid[0:24, 0:32]
    disc = (((yy - 12) ** 2 + (xx - 15) ** 2) <= 81).astype(np.uint8) * 255  # curved edges: JPEG rings
    path = tmp_path / "m.jpg"
    Image.fromarray(disc, "L").save(path, quality=60)
    img = open_image(path, 10**6)
    hard, soft = describe_mask(img, True, THRESHOLD), describe_mask(img, True, SOFT)
    assert (hard.kind, soft.kind) == ("jpeg-threshold", "jpeg-soft")
    assert 0 < hard.noise == soft.noise < 0.5  # some pixels neither near 0 nor near 255
    row = {"mask_path": str(path), "width": 32, "height": 24, "mask_resize": False}
    thresholded = load_mask({**row, "mask_kind": hard.kind}, 10**6)
    assert set(np.unique(thresholded)) <= {0, 255} and (thresholded == disc).mean() > 0.97
    kept = load_mask({**row, "mask_kind": soft.kind}, 10**6)
    assert len(np.unique(kept)) > 2 and np.abs(kept.astype(int) - disc).mean() < 20
    assert not np.isnan(hard.noise) and np.isnan(describe_mask(Image.fromarray(disc), False, THRESHOLD).noise)


def test_a_jpeg_is_known_by_its_bytes_not_its_name(tmp_path):
    Image.fromarray(TRUTH, "L").save(tmp_path / "m.png", format="JPEG")
    assert is_jpeg(tmp_path / "m.png")
    assert describe_mask(open_image(tmp_path / "m.png", 10**6), True, SOFT).kind == "jpeg-soft"


@pytest.mark.parametrize(("image", "jpeg"), [
    (lambda: Image.fromarray(np.dstack([TRUTH, np.zeros_like(TRUTH), TRUTH // 2])), False),
    (lambda: Image.fromarray(np.dstack([TRUTH, np.zeros_like(TRUTH), np.zeros_like(TRUTH)])), True),
], ids=["png", "jpeg"])
def test_a_colour_mask_that_is_not_a_palette_is_named_with_what_to_do(tmp_path, image, jpeg):
    path = tmp_path / ("colour.jpg" if jpeg else "colour.png")
    image().save(path)
    info = describe_mask(open_image(path, 10**6), jpeg, THRESHOLD)
    assert info.kind == "colour" and info.kind not in KINDS and np.isnan(info.fg_fraction)
    with pytest.raises(ImageReadError, match=r"colour\.(png|jpg): the mask is a colour image .* palette PNG"):
        load_mask(path, 10**6)


def test_an_unusual_mode_is_unsupported_and_named(tmp_path):
    path = tmp_path / "m.jpg"
    Image.fromarray(TRUTH, "L").convert("CMYK").save(path)
    assert describe_mask(open_image(path, 10**6), True, THRESHOLD).kind == "colour"
    info = describe_mask(Image.fromarray(TRUTH.astype(np.float32) / 255, "F"), False, THRESHOLD)
    assert info.kind == "unsupported"


@pytest.mark.parametrize(("photo", "mask", "fit"), [
    ((32, 24), (32, 24), "same"),
    ((32, 24), (16, 12), "scaled"),
    ((161, 120), (80, 60), "scaled"),       # half of an odd side, rounded down
    ((163, 121), (41, 30), "scaled"),       # a quarter, each side rounded
    ((1000, 100), (333, 33), "scaled"),     # a third of a long strip
    ((854, 480), (1708, 960), "scaled"),    # larger than the photo
    ((32, 24), (24, 32), "different"),      # the photo stored rotated
    ((32, 24), (32, 20), "different"),      # cropped
    ((32, 24), (32, 23), "different"),      # one row cut off: not a scaling
    ((32, 24), (30, 12), "different"),      # squashed
    ((32, 24), (40, 20), "different"),      # wider but shorter
])
def test_mask_fit(photo, mask, fit):
    assert mask_fit(*photo, *mask) == fit


def test_a_scaled_mask_is_resized_to_its_photo_only_when_the_row_says_so(tmp_path):
    path = tmp_path / "half.png"
    Image.fromarray(TRUTH[::2, ::2], "L").save(path)
    row = {"mask_path": str(path), "mask_kind": "binary", "mask_resize": True, "width": 32, "height": 24}
    alpha = load_mask(row, 10**6)
    assert alpha.shape == (24, 32) and set(np.unique(alpha)) <= {0, 255} and (alpha == TRUTH).mean() > 0.95
    with pytest.raises(ImageReadError, match=r"half\.png: the mask is 16x12, its photo 32x24; set prepare\.resize_mas"):
        load_mask({**row, "mask_resize": False}, 10**6)
    with pytest.raises(ImageReadError, match="aspect ratio differs"):
        load_mask({**row, "mask_resize": False, "width": 24, "height": 32}, 10**6)


def test_resizing_keeps_hard_masks_hard_and_soft_masks_soft():
    hard = resize_mask(TRUTH[::2, ::2], 32, 24, hard=True)
    soft = resize_mask(TRUTH[::2, ::2], 32, 24, hard=False)
    assert set(np.unique(hard)) == {0, 255} and len(np.unique(soft)) > 2


def test_the_jpeg_choice_is_checked():
    with pytest.raises(ValueError, match=r"prepare\.jpeg_masks must be one of threshold \| soft"):
        MaskChoices(jpeg="blur", resize=False)
