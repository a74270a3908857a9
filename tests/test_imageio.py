"""Reading images and masks: errors name the file, bombs are refused, kinds are recognised."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bgremoval.imageio import ImageReadError, describe_mask, load_mask, load_rgb, open_image


def _jpeg_bytes(size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_zero_byte_file_is_reported(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.png.*empty"):
        open_image(p, 10**6)


def test_non_image_bytes_named_png_are_reported(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is not a picture")
    with pytest.raises(ImageReadError, match=r"notes\.png: cannot be decoded"):
        open_image(p, 10**6)


def test_truncated_jpeg_is_reported(tmp_path):
    p = tmp_path / "cut.jpg"
    p.write_bytes(_jpeg_bytes()[:300])
    with pytest.raises(ImageReadError, match=r"cut\.jpg"):
        open_image(p, 10**6)


def test_pixel_cap_refuses_before_decoding(tmp_path):
    p = tmp_path / "big.png"
    Image.new("L", (200, 100)).save(p)
    with pytest.raises(ImageReadError, match=r"20000 pixels is over the limit of 19999"):
        open_image(p, 19_999)
    assert open_image(p, 20_000).size == (200, 100)


def test_exif_orientation_is_applied(tmp_path):
    p = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": stored 40x30, shown 30x40
    Image.new("RGB", (40, 30)).save(p, exif=exif)
    assert open_image(p, 10**6).size == (30, 40)


@pytest.mark.parametrize(
    ("mode", "values", "kind"),
    [("L", [0, 255], "binary"), ("L", [0, 128, 255], "soft"), ("RGBA", [0, 255], "alpha"), ("RGB", [0, 255], "invalid")],
)
def test_mask_kinds(mode, values, kind):
    arr = np.array([values * 4], dtype=np.uint8)
    if mode == "L":
        img = Image.fromarray(arr, "L")
    else:
        img = Image.new(mode, (arr.shape[1], 1))
        if mode == "RGBA":
            img.putalpha(Image.fromarray(arr, "L"))
    info = describe_mask(img)
    assert info.kind == kind
    if kind != "invalid":
        assert info.fg_fraction == pytest.approx(arr.mean() / 255)


def test_alpha_of_rgba_png_is_the_mask(tmp_path):
    p = tmp_path / "cut.png"
    img = Image.new("RGBA", (4, 2), (10, 20, 30, 0))
    img.putpixel((1, 1), (10, 20, 30, 200))
    img.save(p)
    mask = load_mask(p, 10**6)
    assert mask.dtype == np.uint8 and mask.shape == (2, 4)
    assert mask[1, 1] == 200 and mask.sum() == 200


def test_load_rgb_converts_grey_to_three_channels(tmp_path):
    p = tmp_path / "grey.png"
    Image.new("L", (5, 3), 7).save(p)
    arr = load_rgb(p, 10**6)
    assert arr.shape == (3, 5, 3) and (arr == 7).all()
