"""int8 quantisation of the exported U²-NetP, and the quality guard that decides whether to serve it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bgremoval.export import OnnxSegmenter, export_u2netp
from bgremoval.manifest import build_manifest, pair_files
from bgremoval.quantize import build_served_onnx, gate_metrics, quantize_int8
from bgremoval.train import ModelConfig, build_network, inference_model
from tests.conftest import disc_image


@pytest.fixture(scope="module")
def photos():
    from sklearn.datasets import load_sample_images

    return list(load_sample_images().images)


@pytest.fixture(scope="module")
def stock():
    return inference_model(build_network(ModelConfig(family="u2netp")))


def test_int8_is_smaller_and_close_to_float32_once_outlier_channels_stay_float(stock, photos, tmp_path):
    # Stock U²-NetP at 320, calibrated on 18 crops. Plain int8: the palace photo's mask agreed with
    # float32 on only 93 % of pixels. Stage2d's last conv is fed a channel ~18x the median channel's
    # range; kept float32 (with its Concat), int8 follows float32 closely.
    import onnx

    from bgremoval.u2netp import conv_names_in_forward_order, find_u2netp_onnx

    crops = [p[y:y + 200, x:x + 260] for p in photos for y in (0, 100, 200) for x in (0, 180, 360)]
    f32 = export_u2netp(stock, tmp_path / "f32.onnx", 320)
    plain, none_kept = quantize_int8(f32, tmp_path / "plain.onnx", crops, 320)
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


@pytest.fixture
def test_rows(tmp_path):
    for i in range(3):
        img, mask = disc_image(48, 64, seed=i)
        (tmp_path / "d" / "images").mkdir(parents=True, exist_ok=True)
        (tmp_path / "d" / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tmp_path / "d" / "images" / f"d_{i}.png")
        Image.fromarray(mask).save(tmp_path / "d" / "masks" / f"d_{i}.png")
    return build_manifest(pair_files(tmp_path / "d"), max_pixels=10**6)


@pytest.mark.parametrize("max_loss,served_int8", [(1.0, True), (-1.0, False)])
def test_int8_is_served_only_within_the_allowed_loss(stock, photos, test_rows, tmp_path, max_loss, served_int8):
    served = build_served_onnx(stock, tmp_path, 160, check_images=photos[:1], quantize="int8", calibration=photos,
                               holdout=test_rows, max_pixels=10**6, metric="max_f", max_loss=max_loss,
                               outlier_ratio=float("inf"))
    assert served.quantized is served_int8
    assert served.path.name == ("model_int8.onnx" if served_int8 else "model_f32.onnx")
    assert set(served.metrics_f32) >= {"max_f", "mae"} and set(served.metrics_int8) >= {"max_f", "mae"}
    assert ("serving float32" in served.reason) is (not served_int8)


def test_quantize_none_serves_float32(stock, photos, test_rows, tmp_path):
    served = build_served_onnx(stock, tmp_path, 160, check_images=photos[:1], quantize="none", calibration=[],
                               holdout=test_rows, max_pixels=10**6, metric="max_f", max_loss=0.0,
                               outlier_ratio=10.0)
    assert not served.quantized and served.metrics_int8 is None and served.path.exists()


def test_the_gate_judges_the_served_model_on_test_and_keeps_the_keras_scores_as_tags(stock, photos, test_rows, tmp_path):
    # register: the int8 check ran on val (holdout); the champion gate then scores the served file on test.
    from bgremoval.evaluate import evaluate, keras_predictor
    from bgremoval.metrics import summarise

    served = build_served_onnx(stock, tmp_path, 160, check_images=photos[:1], quantize="int8", calibration=photos,
                               holdout=test_rows.head(2), max_pixels=10**6, metric="max_f", max_loss=1.0,
                               outlier_ratio=10.0)
    assert served.quantized
    keras = {**summarise(evaluate(test_rows, keras_predictor(stock, 160), 10**6)[1]), "size": 160,
             "baseline": {"max_f": 0.5}}
    judged, tags = gate_metrics(keras, served, test_rows, 160, 10**6)
    int8 = summarise(evaluate(test_rows, OnnxSegmenter(served.path, 160), 10**6)[1])
    assert {k: judged[k] for k in int8} == int8 and judged["baseline"] == {"max_f": 0.5} and judged["size"] == 160
    assert tags == {f"keras.{k}": f"{v:.6f}" for k, v in keras.items() if isinstance(v, float)}
    assert any(judged[k] != keras[k] for k in int8)  # int8 is close to float32, not identical
    assert gate_metrics(keras, None, test_rows, 160, 10**6) == (keras, {})  # served by Keras: its own scores


def _two_branch_graph(path, scale: float):
    """x -> Conv a (4 ch) -> Relu -> Concat(., Relu(Conv b)) -> Conv c: branch a's channel 0 scaled by `scale`."""
    import onnx
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
    from bgremoval.quantize import outlier_nodes

    model = _two_branch_graph(tmp_path / "g.onnx", scale)
    batches = [np.random.default_rng(i).normal(size=(1, 3, 8, 8)).astype(np.float32) for i in range(4)]
    assert outlier_nodes(model, batches, ratio=10.0) == kept
