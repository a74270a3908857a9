"""Reading masks: each kind is recognised, the alpha of an RGBA file is the mask, unusable modes are named."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bgremoval.data.masks import MASK_MODES, describe_mask, load_mask, mask_array
from bgremoval.images import ImageReadError


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
    assert (info.width, info.height, info.mode) == (arr.shape[1], 1, mode)
    if kind != "invalid":
        assert info.fg_fraction == pytest.approx(arr.mean() / 255)
    else:
        assert mode not in MASK_MODES and np.isnan(info.fg_fraction)


def test_alpha_of_rgba_png_is_the_mask(tmp_path):
    p = tmp_path / "cut.png"
    img = Image.new("RGBA", (4, 2), (10, 20, 30, 0))
    img.putpixel((1, 1), (10, 20, 30, 200))
    img.save(p)
    mask = load_mask(p, 10**6)
    assert mask.dtype == np.uint8 and mask.shape == (2, 4)
    assert mask[1, 1] == 200 and mask.sum() == 200


def test_grey_alpha_uses_the_alpha_not_the_grey():
    img = Image.new("LA", (3, 1), (255, 0))
    img.putpixel((2, 0), (0, 90))
    assert mask_array(img).tolist() == [[0, 0, 90]]


def test_an_rgb_mask_file_is_refused_naming_the_file_and_the_fix(tmp_path):
    p = tmp_path / "colour.png"
    Image.new("RGB", (4, 2), (255, 255, 255)).save(p)
    with pytest.raises(ImageReadError, match=r"colour\.png: mask mode 'RGB' .* 8-bit L PNG"):
        load_mask(p, 10**6)
