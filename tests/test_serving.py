"""Serving's parts without a network: options and their defaults, rendering, request decoding and caps,
the serving config's file, and the runtime's preprocessing and onnxruntime set-up."""

from __future__ import annotations

import base64
import io
import json
import logging

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bgremoval import network_io
from bgremoval.serving import runtime
from bgremoval.serving.config import CONFIG_FILE, ServingConfig
from bgremoval.serving.options import KINDS, RequestError, options_from, parse_color
from bgremoval.serving.refine import Refine
from bgremoval.serving.render import png_bytes, render
from bgremoval.serving.request import RequestTooLarge, check_request_size, cut_out, decode_base64_image
from tests.helpers import PARAMS, serving_config

DEFAULTS = dict(PARAMS["serve"]["defaults"])  # what a request gets when it names nothing
WHITE = (255, 255, 255)
MAX_PIXELS = 10**6


def opts(**params):
    """Options as a request naming `params` gets them from the served defaults."""
    return options_from(params, DEFAULTS, MAX_PIXELS)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png(array: np.ndarray) -> bytes:
    return png_bytes(Image.fromarray(array))


def from_b64_png(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def red_channel(image: np.ndarray) -> np.ndarray:
    """A stand-in segmenter: foreground probability = red channel."""
    return image[..., 0].astype(np.float32) / 255


# --- options -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text,rgb", [("#00ff00", (0, 255, 0)), ("0000ff", (0, 0, 255)), ("10, 20,30", (10, 20, 30)),
                                      ("white", (255, 255, 255))])
def test_colours_parse(text, rgb):
    assert parse_color(text) == rgb


TINY = b64(png(np.zeros((4, 4, 3), np.uint8)))
BAD_PARAMS = [
    ({"output": "alpha"}, "output 'alpha' is not one of mask, cutout, composite"),
    ({"threshold": "high"}, "threshold 'high' is not a number"),
    ({"threshold": 2}, "outside [0, 1]"),
    ({"threshold": float("nan")}, "threshold nan is not a number"),
    ({"bg_color": "1,2"}, "bg_color '1,2' is not a colour"),
    ({"bg_color": "300,0,0"}, "bg_color '300,0,0' is not a colour"),
    ({"background": "plaid"}, "background 'plaid' is not one of color, blur, image"),
    ({"bg_blur": 0}, "bg_blur 0 is outside (0, 25]"),
    ({"bg_blur": 30}, "bg_blur 30 is outside (0, 25] (the blur's standard deviation"),
    ({"bg_blur": "lots"}, "bg_blur 'lots' is not a number"),
    ({"estimate_foreground": "maybe"}, "estimate_foreground 'maybe' is not true or false"),
    ({"matting": 2}, "matting 2 is not true or false"),
    ({"matting": None, "main_object": "sometimes"},
     "main_object 'sometimes' is not true, false or null (null or 'default': the model's own refinement)"),
    ({"sharpen": "sharp"},
     "sharpen 'sharp' is not a number (k > 0 overrides the model's sharpening, 1: none; null, 0 or negative: the "
     "model's own)"),
    ({"sharpen": float("inf")}, "sharpen inf is not a number"),
    ({"output": "composite", "background": "image"}, "background 'image' needs bg_image"),
    ({"bg_image": TINY}, "bg_image is used only with output 'composite' and background 'image' (here: output 'cutout', "
                         "background 'color')"),
    ({"output": "composite", "bg_image": TINY}, "(here: output 'composite', background 'color')"),
]


@pytest.mark.parametrize("params,needle", BAD_PARAMS)
def test_bad_params_name_the_parameter(params, needle):
    with pytest.raises(RequestError) as err:
        opts(**params)
    assert needle in str(err.value)


def test_the_served_defaults_are_what_a_request_naming_nothing_gets():
    assert DEFAULTS == {"output": "cutout", "threshold": None, "background": "color", "bg_color": "#ffffff",
                        "bg_image": None, "bg_blur": 2.0, "estimate_foreground": True, "matting": False,
                        "main_object": None, "sharpen": None}
    served = options_from(None, DEFAULTS, MAX_PIXELS)
    assert (served.output, served.threshold, served.bg_color, served.background, served.bg_image, served.bg_blur,
            served.estimate_foreground, served.matting, served.main_object, served.sharpen) == (
        "cutout", None, WHITE, "color", None, 2.0, True, False, None, None)
    for nothing in ({}, {name: None for name in KINDS}, {"output": "", "bg_color": "", "bg_image": ""}):
        assert options_from(nothing, DEFAULTS, MAX_PIXELS) == served, nothing
    other = {**DEFAULTS, "output": "composite", "threshold": 0.25, "bg_color": "0,255,0", "matting": True}
    theirs = options_from(None, other, MAX_PIXELS)  # another model's defaults
    assert (theirs.output, theirs.threshold, theirs.bg_color, theirs.matting) == ("composite", 0.25, (0, 255, 0), True)
    mask = options_from({"output": "mask"}, other, MAX_PIXELS)  # the rest still defaults
    assert (mask.output, mask.threshold, mask.bg_color, mask.matting) == ("mask", 0.25, (0, 255, 0), True)


def test_negative_threshold_means_a_soft_mask_and_output_is_case_blind():
    assert opts(threshold=-1.0, output="CUTOUT") == opts()
    hard = {**DEFAULTS, "threshold": 0.5}
    assert options_from({"threshold": "-1"}, hard, MAX_PIXELS).threshold is None  # a hard default turned soft
    assert options_from({"threshold": "0.7"}, hard, MAX_PIXELS).threshold == 0.7


def test_a_request_overrides_the_models_refinement_or_keeps_it():
    own = Refine(True, True, 2.0)  # what export chose for the served model
    for unset in ({}, {"main_object": None, "sharpen": None}, {"main_object": "default", "sharpen": -1},
                  {"sharpen": 0}, {"main_object": "", "sharpen": ""}):
        assert opts(**unset).refine(own) == own, unset
    assert opts(main_object=False).refine(own) == Refine(True, False, 2.0)
    assert opts(main_object="true", sharpen="1").refine(Refine.none()) == Refine(False, True, 1.0)
    assert opts(sharpen=3).refine(own) == Refine(True, True, 3.0)  # flip is never a request's to change
    assert opts(main_object=0).main_object is False and opts(main_object="FALSE").main_object is False


def test_switches_take_booleans_numbers_and_words():
    assert opts(estimate_foreground=False).estimate_foreground is False
    assert opts(estimate_foreground="no", matting="yes") == opts(estimate_foreground=0, matting=1)
    assert opts(matting="true").matting is True and opts(matting=np.bool_(True)).matting is True


def test_backgrounds_parse_and_a_background_image_is_decoded_once():
    picture = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = opts(output="composite", background="IMAGE", bg_image=b64(png(picture)))
    assert image.background == "image" and (image.bg_image == picture).all()
    assert (opts(output="composite", background="image", bg_image=picture).bg_image == picture).all()  # the CLI's
    with pytest.raises(RequestError, match=r"bg_image: expected an RGB image, got an array of shape \(5, 7\)"):
        opts(output="composite", background="image", bg_image=picture[..., 0])
    assert (opts(background="blur", bg_blur="12.5").background, opts(bg_blur=12.5).bg_blur) == ("blur", 12.5)
    with pytest.raises(RequestError, match="bg_image: 7x5 = 35 pixels is over the limit of 30"):
        options_from({"output": "composite", "background": "image", "bg_image": b64(png(picture))}, DEFAULTS, 30)


def test_an_unknown_parameter_is_refused_by_name():
    with pytest.raises(RequestError) as err:
        opts(output="mask", size=320)
    assert "unknown parameter(s) size" in str(err.value)
    assert f"the parameters are {', '.join(sorted(KINDS))}" in str(err.value)


def test_defaults_must_name_every_option_and_nothing_else():
    partial = {"output": "mask", "threshold": None, "bg_color": "white"}  # a model exported before the others
    with pytest.raises(ValueError, match="serve.defaults must name every request option") as err:
        options_from(None, partial, MAX_PIXELS)
    assert "missing background, bg_blur, bg_image, estimate_foreground, main_object, matting, sharpen" in str(err.value)
    assert "dvc repro export" in str(err.value)
    with pytest.raises(ValueError, match="unknown colour"):
        options_from(None, {**DEFAULTS, "colour": "red"}, MAX_PIXELS)


# --- request decoding ------------------------------------------------------------------------------

def test_decoding_accepts_wrapped_base64_and_data_urls():
    image = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    text = b64(png(image))
    wrapped = "\n".join(text[i:i + 76] for i in range(0, len(text), 76))
    for variant in (text, wrapped, "data:image/png;base64," + text, text.encode()):
        assert (decode_base64_image(variant, 10**6, "row 0") == image).all()


def test_decoding_converts_grey_and_rgba_to_rgb():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = decode_base64_image(b64(png_bytes(Image.fromarray(grey, mode="L"))), 10**6, "row 0")
    assert out.shape == (3, 4, 3) and (out == grey[..., None]).all()
    rgba = np.dstack([np.full((3, 4, 3), 7, np.uint8), np.zeros((3, 4), np.uint8)])
    assert (decode_base64_image(b64(png_bytes(Image.fromarray(rgba, "RGBA"))), 10**6, "row 0") == 7).all()


def _bad_inputs():
    big = png(np.zeros((300, 400, 3), np.uint8))  # 120,000 pixels: a few hundred bytes of PNG
    return [
        ("not base64 !!", "row 0: is not valid base64"),
        (b64(b"hello, world"), "row 0: cannot be decoded as an image"),
        ("", "row 0: is empty (0 bytes)"),
        (b64(big), "row 0: 400x300 = 120000 pixels is over the limit of 100000 (serve.max_pixels / BGREMOVAL_MAX_PIXELS)"),
        (b64(png(np.zeros((40, 30, 3), np.uint8))[:60]), "row 0: cannot be decoded as an image"),  # truncated
        (12345, "row 0: expected a base64 string, got int"),
    ]


@pytest.mark.parametrize("value,needle", _bad_inputs())
def test_bad_images_are_refused_with_the_reason(value, needle):
    with pytest.raises(RequestError) as err:
        decode_base64_image(value, 100_000, "row 0")
    assert needle in str(err.value)


@pytest.mark.parametrize("value,needle", [(v, n.replace("row 0", "bg_image")) for v, n in _bad_inputs() if v != ""]
                         + [("", "background 'image' needs bg_image")])  # empty: not given
def test_a_bad_background_image_is_refused_by_name(value, needle):
    with pytest.raises(RequestError) as err:
        options_from({"output": "composite", "background": "image", "bg_image": value}, DEFAULTS, 100_000)
    assert needle in str(err.value)


def test_request_size_is_capped_before_decoding():
    check_request_size(["x" * 1000, "y" * 1000], max_request_mb=0.002)  # exactly at the cap: served
    with pytest.raises(RequestTooLarge) as err:
        check_request_size(["x" * 1000, "y" * 1001], max_request_mb=0.002)
    assert isinstance(err.value, RequestError)  # a RequestError like any other bad input, answered 413
    assert "over the limit of 0.002 MB (serve.max_request_mb / BGREMOVAL_MAX_REQUEST_MB)" in str(err.value)
    assert "send fewer or smaller images" in str(err.value)


# --- rendering ---------------------------------------------------------------------------------

def test_render_mask_cutout_and_composite_at_the_input_size():
    image = np.full((4, 6, 3), 200, np.uint8)
    prob = np.zeros((4, 6), np.float32)
    prob[:, 3:] = 1.0
    prob[0, 0] = 0.4
    mask = render(image, prob, opts(output="mask"))
    assert mask.mode == "L" and mask.size == (6, 4) and np.asarray(mask)[0, 0] == 102 and np.asarray(mask)[0, 5] == 255
    hard = np.asarray(render(image, prob, opts(output="mask", threshold=0.3)))
    assert set(np.unique(hard)) == {0, 255} and hard[0, 0] == 255
    cutout = render(image, prob, opts(output="cutout", estimate_foreground=False))
    rgba = np.asarray(cutout)
    assert cutout.mode == "RGBA" and rgba.shape == (4, 6, 4) and (rgba[..., :3] == 200).all()
    assert rgba[0, 0, 3] == 102 and rgba[1, 0, 3] == 0 and rgba[1, 5, 3] == 255
    comp = render(image, prob, opts(output="composite", bg_color="0,255,0", estimate_foreground=False))
    rgb = np.asarray(comp)
    assert comp.mode == "RGB" and rgb.shape == (4, 6, 3)
    assert tuple(rgb[1, 0]) == (0, 255, 0) and tuple(rgb[1, 5]) == (200, 200, 200)
    assert tuple(rgb[0, 0]) == (80, 233, 80)  # 0.4 of the image over 0.6 of the background


def test_png_bytes_round_trip_exactly():
    image = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert (np.asarray(Image.open(io.BytesIO(png_bytes(Image.fromarray(image))))) == image).all()


# --- a whole request ---------------------------------------------------------------------------

def test_cut_out_returns_one_png_per_row_at_each_size():
    a = np.zeros((10, 20, 3), np.uint8)
    a[:, 10:, 0] = 255
    b = np.zeros((5, 5, 3), np.uint8)
    frame = pd.DataFrame({"image": [b64(png(a)), b64(png(b))]})
    out = cut_out(lambda o: red_channel, frame, {"output": "mask"}, DEFAULTS, 10**6, 50.0)
    assert list(out.columns) == ["png", "width", "height", "foreground"]
    assert out[["width", "height"]].values.tolist() == [[20, 10], [5, 5]]
    assert out["foreground"].tolist() == [0.5, 0.0]
    mask = np.asarray(from_b64_png(out["png"][0]))
    assert mask.shape == (10, 20) and (mask[:, 10:] == 255).all() and (mask[:, :10] == 0).all()


def test_cut_out_without_params_renders_the_served_default():
    a = np.zeros((6, 8, 3), np.uint8)
    a[:, 4:, 0] = 255
    frame = pd.DataFrame({"image": [b64(png(a))]})
    cut = from_b64_png(cut_out(lambda o: red_channel, frame, None, DEFAULTS, 10**6, 50.0)["png"][0])
    assert cut.mode == "RGBA" and (np.asarray(cut)[..., :3] == a).all()  # serve.defaults.output: cutout
    mask_default = {**DEFAULTS, "output": "mask"}
    assert from_b64_png(cut_out(lambda o: red_channel, frame, None, mask_default, 10**6, 50.0)["png"][0]).mode == "L"


@pytest.mark.parametrize("frame,params,needle", [
    (pd.DataFrame({"img": ["x"]}), None, "expected a column named 'image'"),
    (pd.DataFrame({"image": []}), None, "no rows"),
    (pd.DataFrame({"image": [b64(png(np.zeros((4, 4, 3), np.uint8))), "%%%"]}), None, "row 1 (image): is not valid base64"),
    (pd.DataFrame({"image": [b64(png(np.zeros((4, 4, 3), np.uint8)))]}), {"output": "sticker"}, "output 'sticker'"),
    (pd.DataFrame({"image": [b64(png(np.zeros((4, 4, 3), np.uint8)))]}), {"colour": "red"}, "unknown parameter(s) colour"),
    (pd.DataFrame({"image": [b64(png(np.zeros((400, 300, 3), np.uint8)))]}), None, "row 0 (image): 300x400"),
])
def test_bad_frames_fail_before_any_work(frame, params, needle):
    calls = []
    with pytest.raises(RequestError) as err:
        cut_out(lambda o: lambda im: calls.append(im) or red_channel(im), frame, params, DEFAULTS, 100_000, 50.0)
    assert needle in str(err.value) and calls == []


def test_an_oversized_request_is_refused_before_any_image_is_decoded():
    frame = pd.DataFrame({"image": ["not even base64 " * 100]})  # 1.6 KB over a 1 KB cap: the size decides
    with pytest.raises(RequestTooLarge, match="over the limit of 0.001 MB"):
        cut_out(lambda o: red_channel, frame, None, DEFAULTS, 10**6, 0.001)


# --- the serving config ----------------------------------------------------------------------------

def test_serving_config_round_trips_through_serving_json(tmp_path):
    config = serving_config(runtime="onnxruntime", model_file="model.onnx", size=288, int8=True,
                            refine=Refine(True, True, 2.0), max_pixels=1234, max_request_mb=0.5,
                            defaults={**DEFAULTS, "output": "mask", "threshold": 0.4, "bg_color": "#00ff00"})
    path = config.write(tmp_path)
    assert path == tmp_path / CONFIG_FILE
    stored = json.loads(path.read_text())
    assert stored["refine"] == {"flip": True, "main_object": True, "sharpen": 2.0} and stored["int8"] is True
    assert ServingConfig.read(tmp_path) == config
    assert ServingConfig.from_dict(config.to_dict()) == config


def test_serving_config_refuses_what_it_cannot_serve(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro export"):
        ServingConfig.read(tmp_path)
    with pytest.raises(ValueError, match="runtime 'tflite' is not one of onnxruntime, keras"):
        serving_config(runtime="tflite")
    stored = serving_config().to_dict()
    del stored["size"]
    with pytest.raises(ValueError, match="not a bgremoval serving config"):
        ServingConfig.from_dict(stored)
    with pytest.raises(ValueError, match="not a bgremoval serving config"):
        ServingConfig.from_dict({**serving_config().to_dict(), "colour": "red"})


# --- the runtime -----------------------------------------------------------------------------------

def test_preprocess_squashes_scales_by_the_images_maximum_and_normalises():
    image = np.zeros((30, 50, 3), np.uint8)
    image[..., 0] = 100  # the brightest value: it becomes 1
    image[:, :25, 1] = 50
    x = network_io.preprocess(image, 16)
    assert x.shape == (1, 3, 16, 16) and x.dtype == np.float32
    assert np.allclose(x[0, 0], (1.0 - network_io.MEAN[0]) / network_io.STD[0])
    assert np.allclose(x[0, 2], (0.0 - network_io.MEAN[2]) / network_io.STD[2])
    assert np.allclose(x[0, 1, :, 0], (0.5 - network_io.MEAN[1]) / network_io.STD[1], atol=1e-6)
    dark = network_io.preprocess(np.zeros((4, 4, 3), np.uint8), 8)  # all black: no division by zero
    assert np.isfinite(dark).all()


def test_resize_back_returns_the_images_size_in_zero_to_one():
    prob = np.array([[-0.5, 0.25], [0.75, 1.5]], np.float32)
    out = network_io.resize_back(prob, width=6, height=4)
    assert out.shape == (4, 6) and out.min() == 0.0 and out.max() == 1.0
    assert network_io.squash(np.full((9, 3, 3), 255, np.uint8), 5).shape == (5, 5, 3)


def test_providers_keep_the_cpu_last_and_drop_unknown_ones_with_a_warning(monkeypatch, caplog):
    import onnxruntime as ort

    monkeypatch.delenv(runtime.PROVIDERS_ENV, raising=False)
    assert runtime.providers() == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setenv(runtime.PROVIDERS_ENV, " CPUExecutionProvider, CUDAExecutionProvider,TensorrtExecutionProvider ")
    with caplog.at_level(logging.WARNING, logger=runtime.__name__):
        assert runtime.providers() == ["CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"]
    assert not caplog.records  # every one named is there: nothing to warn about
    monkeypatch.setenv(runtime.PROVIDERS_ENV, "CoreMLExecutionProvider,CUDAExecutionProvider")
    with caplog.at_level(logging.WARNING, logger=runtime.__name__):
        assert runtime.providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    [record] = caplog.records
    assert record.levelno == logging.WARNING and runtime.PROVIDERS_ENV in record.getMessage()
    assert "CoreMLExecutionProvider" in record.getMessage() and "CUDA" not in record.getMessage().split(" not in ")[0]


def test_threads_come_from_the_environment_or_are_left_to_onnxruntime(monkeypatch):
    monkeypatch.delenv(runtime.THREADS_ENV, raising=False)
    assert runtime.threads() is None
    monkeypatch.setenv(runtime.THREADS_ENV, "3")
    assert runtime.threads() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(runtime.THREADS_ENV, bad)
        with pytest.raises(ValueError, match=f"BGREMOVAL_THREADS='{bad}' is not a positive whole number"):
            runtime.threads()
