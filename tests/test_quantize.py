"""int8 quantisation of the exported U²-NetP: static, calibrated on real images, with the convs fed an outlier
channel kept in float32. (Whether int8 is served is decided on val by export/choose.py: test_export_choice.py.)"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bgremoval.export.quantize import outlier_nodes, quantize_int8
from bgremoval.network_io import preprocess
from bgremoval.serving.runtime import OnnxSegmenter
from tests.helpers import sample_photo, stock_onnx_export


@pytest.fixture(scope="module")
def photos():
    return [sample_photo(name) for name in ("china.jpg", "flower.jpg")]


@pytest.mark.slow
def test_int8_is_smaller_and_close_to_float32_once_outlier_channels_stay_float(photos, tmp_path):
    # Stock U²-NetP at 320, calibrated on 8 crops. Plain int8: the palace photo's mask agreed with
    # float32 on only 93 % of pixels. Stage2d's last conv is fed a channel ~18x the median channel's
    # range; kept float32 (with its Concat), int8 follows float32 closely.
    from bgremoval.model.u2netp import conv_names_in_forward_order
    from bgremoval.weights import find_u2netp_onnx

    crops = [p[y:y + 200, x:x + 260] for p in photos for y in (0, 200) for x in (0, 360)]
    f32 = stock_onnx_export(tmp_path / "f32.onnx")
    plain, none_kept = quantize_int8(f32, tmp_path / "plain.onnx", crops, 320, outlier_ratio=float("inf"))
    int8, kept = quantize_int8(f32, tmp_path / "int8.onnx", crops, 320, outlier_ratio=10.0)
    convs = [n.name for n in onnx.load(str(find_u2netp_onnx())).graph.node if n.op_type == "Conv"]
    assert none_kept == [] and dict(zip(conv_names_in_forward_order(), convs))["stage2d.rebnconv1d"] in kept
    assert int8.stat().st_size < 0.4 * f32.stat().st_size
    reference, agree = [OnnxSegmenter(f32, 320)(photo) for photo in photos], {}
    for name, model in (("plain", plain), ("int8", int8)):
        segment = OnnxSegmenter(model, 320)
        for i, (photo, a) in enumerate(zip(photos, reference)):
            b = segment(photo)
            assert a.shape == b.shape == photo.shape[:2]
            agree[name, i] = ((a >= 0.5) == (b >= 0.5)).mean()
    assert min(agree["int8", i] for i in range(len(photos))) > 0.99
    assert min(agree["plain", i] for i in range(len(photos))) < 0.95


def _two_branch_graph(path, scale: float):
    """x -> Conv a (4 ch) -> Relu -> Concat(., Relu(Conv b)) -> Conv c: branch a's channel 0 scaled by `scale`."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    wa = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    wa[0] *= scale
    inits = [numpy_helper.from_array(wa, "wa"), numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "wb"),
             numpy_helper.from_array(rng.normal(size=(2, 8, 3, 3)).astype(np.float32), "wc")]
    conv = lambda name, x, w, y: helper.make_node("Conv", [x, w], [y], name=name, pads=[1, 1, 1, 1])  # noqa: E731
    nodes = [conv("conv_a", "x", "wa", "a"), helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
             conv("conv_b", "x", "wb", "b"), helper.make_node("Relu", ["b"], ["rb"], name="relu_b"),
             helper.make_node("Concat", ["ra", "rb"], ["cat"], name="concat", axis=1), conv("conv_c", "cat", "wc", "y")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


@pytest.mark.parametrize("scale,kept", [(1.0, []), (100.0, ["concat", "conv_c"])])
def test_a_conv_fed_an_outlier_channel_is_kept_in_float32(tmp_path, scale, kept):
    model = _two_branch_graph(tmp_path / "g.onnx", scale)
    batches = [np.random.default_rng(i).normal(size=(1, 3, 8, 8)).astype(np.float32) for i in range(4)]
    assert outlier_nodes(model, batches, ratio=10.0) == kept


def _run(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("scale,ratio,float_convs", [(1.0, 10.0, set()), (100.0, 10.0, {"conv_c"}),
                                                     (100.0, float("inf"), set())])
def test_quantize_int8_quantises_every_conv_but_those_it_keeps_and_stays_close(tmp_path, scale, ratio, float_convs):
    """On a tiny graph: static QDQ int8 of every conv's input and weights, except around an outlier channel
    (unless the ratio is infinite); the output follows float32, and the same calibration gives the same file."""
    f32 = _two_branch_graph(tmp_path / "g.onnx", scale)
    rng = np.random.default_rng(0)
    calibration = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(8)]
    int8, kept = quantize_int8(f32, tmp_path / "int8.onnx", calibration, 8, ratio)
    assert kept == (["concat", "conv_c"] if float_convs else [])

    graph = onnx.load(str(int8)).graph
    dequantised = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    convs = {n.name: n for n in graph.node if n.op_type == "Conv"}
    assert set(convs) == {"conv_a", "conv_b", "conv_c"}
    for name, node in convs.items():  # a quantised conv reads dequantised input and weights
        assert all(i in dequantised for i in node.input[:2]) is (name not in float_convs), name
        assert any(i in dequantised for i in node.input[:2]) is (name not in float_convs), name

    x = preprocess(calibration[0], 8)
    a, b = _run(f32, x), _run(int8, x)
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()
    again, _ = quantize_int8(f32, tmp_path / "again.onnx", calibration, 8, ratio)
    assert again.read_bytes() == int8.read_bytes()
