"""Reading images: errors name the file, bombs are refused before decoding, EXIF orientation is applied."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bgremoval.images import ImageReadError, load_rgb, open_image, sha256_file


def _jpeg_bytes(size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_zero_byte_file_is_reported(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.png.*empty"):
        open_image(p, 10**6)


def test_missing_file_is_reported_as_unreadable(tmp_path):
    with pytest.raises(ImageReadError, match=r"gone\.png: cannot be read"):
        open_image(tmp_path / "gone.png", 10**6)


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
    with pytest.raises(ImageReadError, match=r"20000 pixels is over the limit of 19999 \(prepare\.max_pixels\)"):
        open_image(p, 19_999)
    assert open_image(p, 20_000).size == (200, 100)


def test_request_bytes_are_read_and_errors_name_the_label_and_the_limit():
    data = _jpeg_bytes((40, 30))
    assert open_image(data, 10**6).size == (40, 30)
    with pytest.raises(ImageReadError, match=r"^upload: is empty"):
        open_image(b"", 10**6, label="upload")
    with pytest.raises(ImageReadError, match=r"^upload: 40x30 = 1200 pixels .* \(serve\.max_pixels\)"):
        open_image(data, 1199, label="upload", limit_name="serve.max_pixels")


def test_exif_orientation_is_applied(tmp_path):
    p = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": stored 40x30, shown 30x40
    Image.new("RGB", (40, 30)).save(p, exif=exif)
    assert open_image(p, 10**6).size == (30, 40)


def test_load_rgb_converts_grey_to_three_channels(tmp_path):
    p = tmp_path / "grey.png"
    Image.new("L", (5, 3), 7).save(p)
    arr = load_rgb(p, 10**6)
    assert arr.dtype == np.uint8 and arr.shape == (3, 5, 3) and (arr == 7).all()


def test_content_hash_follows_the_bytes(tmp_path):
    import hashlib

    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"x" * 3_000_000)  # more than one read chunk
    b.write_bytes(b"x" * 2_999_999 + b"y")
    assert sha256_file(a) == hashlib.sha256(a.read_bytes()).hexdigest()
    assert sha256_file(a) != sha256_file(b)
