"""Serving: request decoding, rendering, the MLflow pyfunc, and the CLI's predict, on a toy-trained model."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bgremoval import serving
from bgremoval.serving import RenderOptions, RequestError, cut_out, decode_base64_image, options_from, parse_color, render


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png(array: np.ndarray) -> bytes:
    return serving.png_bytes(Image.fromarray(array))


def from_b64_png(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def red_channel(image: np.ndarray) -> np.ndarray:
    """A stand-in segmenter: foreground probability = red channel."""
    return image[..., 0].astype(np.float32) / 255


# --- request parsing ---------------------------------------------------------------------------

@pytest.mark.parametrize("text,rgb", [("#00ff00", (0, 255, 0)), ("0000ff", (0, 0, 255)), ("10, 20,30", (10, 20, 30)),
                                      ("white", (255, 255, 255))])
def test_colours_parse(text, rgb):
    assert parse_color(text) == rgb


@pytest.mark.parametrize("params,needle", [({"output": "alpha"}, "output 'alpha' is not one of mask, cutout, composite"),
                                           ({"threshold": "high"}, "threshold 'high' is not a number"),
                                           ({"threshold": 2}, "outside [0, 1]"),
                                           ({"bg_color": "1,2"}, "bg_color '1,2' is not a colour")])
def test_bad_params_name_the_parameter(params, needle):
    with pytest.raises(RequestError, match=None) as err:
        options_from(params)
    assert needle in str(err.value)


def test_default_and_negative_threshold_mean_a_soft_mask():
    assert options_from(None) == RenderOptions()
    assert options_from({"threshold": -1.0, "output": "CUTOUT"}) == RenderOptions(output="cutout")


def test_decoding_accepts_wrapped_base64_and_data_urls():
    image = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    text = b64(png(image))
    wrapped = "\n".join(text[i:i + 76] for i in range(0, len(text), 76))
    for variant in (text, wrapped, "data:image/png;base64," + text):
        assert (decode_base64_image(variant, 10**6, "row 0") == image).all()


def _bad_inputs():
    big = png(np.zeros((300, 400, 3), np.uint8))  # 120,000 pixels: a few hundred bytes of PNG
    return [
        ("not base64 !!", "row 0: is not valid base64"),
        (b64(b"hello, world"), "row 0: cannot be decoded as an image"),
        ("", "row 0: is empty (0 bytes)"),
        (b64(big), "row 0: 400x300 = 120000 pixels is over the limit of 100000"),
        (b64(png(np.zeros((40, 30, 3), np.uint8))[:60]), "row 0: cannot be decoded as an image"),  # truncated
        (12345, "row 0: expected a base64 string, got int"),
    ]


@pytest.mark.parametrize("value,needle", _bad_inputs())
def test_bad_images_are_refused_with_the_reason(value, needle):
    with pytest.raises(RequestError) as err:
        decode_base64_image(value, 100_000, "row 0")
    assert needle in str(err.value)


# --- rendering ---------------------------------------------------------------------------------

def test_render_mask_cutout_and_composite_at_the_input_size():
    image = np.full((4, 6, 3), 200, np.uint8)
    prob = np.zeros((4, 6), np.float32)
    prob[:, 3:] = 1.0
    prob[0, 0] = 0.4
    mask = render(image, prob, RenderOptions("mask"))
    assert mask.mode == "L" and mask.size == (6, 4) and np.asarray(mask)[0, 0] == 102 and np.asarray(mask)[0, 5] == 255
    hard = np.asarray(render(image, prob, RenderOptions("mask", threshold=0.3)))
    assert set(np.unique(hard)) == {0, 255} and hard[0, 0] == 255
    cutout = np.asarray(render(image, prob, RenderOptions("cutout")))
    assert cutout.shape == (4, 6, 4) and (cutout[..., :3] == 200).all() and cutout[1, 0, 3] == 0 and cutout[1, 5, 3] == 255
    comp = np.asarray(render(image, prob, RenderOptions("composite", bg_color=(0, 255, 0))))
    assert comp.shape == (4, 6, 3) and tuple(comp[1, 0]) == (0, 255, 0) and tuple(comp[1, 5]) == (200, 200, 200)


def test_cut_out_returns_one_png_per_row_at_each_size():
    a = np.zeros((10, 20, 3), np.uint8)
    a[:, 10:, 0] = 255
    b = np.zeros((5, 5, 3), np.uint8)
    frame = pd.DataFrame({"image": [b64(png(a)), b64(png(b))]})
    out = cut_out(red_channel, frame, {"output": "mask"}, 10**6)
    assert list(out.columns) == ["png", "width", "height", "foreground"]
    assert out[["width", "height"]].values.tolist() == [[20, 10], [5, 5]]
    assert out["foreground"].tolist() == [0.5, 0.0]
    assert (np.asarray(from_b64_png(out["png"][0]))[:, 10:] == 255).all()


@pytest.mark.parametrize("frame,needle", [
    (pd.DataFrame({"img": ["x"]}), "expected a column named 'image'"),
    (pd.DataFrame({"image": []}), "no rows"),
    (pd.DataFrame({"image": [b64(png(np.zeros((4, 4, 3), np.uint8))), "%%%"]}), "row 1 (image): is not valid base64"),
])
def test_bad_frames_fail_before_any_work(frame, needle):
    calls = []
    with pytest.raises(RequestError) as err:
        cut_out(lambda im: calls.append(im) or red_channel(im), frame, None, 10**6)
    assert needle in str(err.value) and calls == []
