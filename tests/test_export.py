"""ONNX export: fine-tuned U²-NetP weights written back into rembg's graph, with symbolic height and width,
checked against Keras at every size it may be served at."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from bgremoval.export import onnx as export_onnx
from bgremoval.export.onnx import HARD_MAX, ExportError, compare, export_checked, export_u2netp
from bgremoval.model.network import build_network, inference_model
from bgremoval.serving.runtime import OnnxSegmenter
from tests.helpers import PARAMS, disc_image, model_config, sample_photo, serving_config

TOLERANCE = float(PARAMS["export"]["onnx_tolerance"])


def _fine_tuned(seed: int = 0):
    """Stock U²-NetP with every conv nudged, as fine-tuning would: the export must carry the new weights."""
    model = inference_model(build_network(model_config(family="u2netp")))
    rng = np.random.default_rng(seed)
    for layer in model.get_layer("u2netp").layers:
        if layer.weights:
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel * (1 + 0.05 * rng.standard_normal(kernel.shape)).astype(np.float32), bias])
    return model


@pytest.fixture(scope="module")
def model():
    return _fine_tuned()


@pytest.fixture(scope="module")
def images():
    return [disc_image(90, 120)[0], *(sample_photo(name) for name in ("china.jpg", "flower.jpg"))]


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """The fine-tuned model exported once, for the tests that only read the file."""
    return export_u2netp(model, tmp_path_factory.mktemp("export") / "model.onnx", None)


def _keras_at(model, size: int):
    """Keras' mask at the image's own size, through the model's own predict (traced once per size)."""
    from bgremoval.network_io import resize_back, squash

    def predict(image):
        prob = np.asarray(model.predict_on_batch(squash(image, size)[None]))[0, ..., 0]
        return resize_back(prob, image.shape[1], image.shape[0])

    return predict


def test_export_matches_keras(model, images, tmp_path):
    [check] = export_checked(model, tmp_path / "m.onnx", [160], images=images, tolerance=TOLERANCE, template=None)
    assert check.size == 160 and check.passes()
    assert check.mean_abs < 1e-6 and check.max_abs < 1e-3 and check.share_over <= 1e-4
    # The served segmenter, resized back to the photo, gives Keras' mask at the photo's own size.
    prob = OnnxSegmenter(tmp_path / "m.onnx", 160)(images[1])
    assert prob.shape == images[1].shape[:2]
    assert np.abs(prob - _keras_at(model, 160)(images[1])).max() <= HARD_MAX


def test_the_exported_graph_has_symbolic_height_and_width_and_only_the_fused_output(exported):
    graph = onnx.load(str(exported)).graph
    assert len(graph.output) == 1
    for tensor, channels in ((graph.input[0], 3), (graph.output[0], 1)):
        dims = tensor.type.tensor_type.shape.dim
        assert [d.dim_value for d in dims[:2]] == [1, channels]
        assert [d.WhichOneof("value") for d in dims[2:]] == ["dim_param", "dim_param"]
        assert [d.dim_param for d in dims[2:]] == ["height", "width"]


def test_one_exported_file_matches_keras_at_rembgs_size_and_at_another(model, images, exported):
    """The same file serves at 320 x 320 (rembg's size) and at 256 x 256, each within the export tolerance."""
    import onnxruntime as ort

    checks = [compare(model, exported, size, images[:1], TOLERANCE) for size in (320, 256)]
    assert [c.size for c in checks] == [320, 256]
    for check in checks:
        assert check.passes() and check.mean_abs < 1e-6, check
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    [prob] = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, 64, 96), np.float32)})
    assert prob.shape == (1, 1, 64, 96)  # height and width need not even be equal


def test_export_checked_checks_every_size_it_may_be_served_at(model, images, tmp_path, monkeypatch):
    sizes = []
    real = export_onnx.compare
    monkeypatch.setattr(export_onnx, "compare", lambda *args: sizes.append(args[2]) or real(*args))
    checks = export_checked(model, tmp_path / "m.onnx", [64, 96], images=images[:1], tolerance=TOLERANCE,
                            template=None)
    assert sizes == [64, 96] and [c.size for c in checks] == [64, 96] and all(c.passes() for c in checks)


def test_export_carries_the_new_weights_not_the_stock_ones(model, exported):
    from onnx import numpy_helper

    from bgremoval.model.u2netp import conv_names_in_forward_order
    from bgremoval.weights import find_u2netp_onnx

    def convs(path):
        graph = onnx.load(str(path)).graph
        inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        return [(inits[n.input[1]], inits[n.input[2]]) for n in graph.node if n.op_type == "Conv"]

    ours, stock = convs(exported), convs(find_u2netp_onnx())
    names = conv_names_in_forward_order()
    assert len(ours) == len(stock) == len(names)
    for (w, b), (stock_w, _), name in zip(ours, stock, names):
        kernel, bias = model.get_layer("u2netp").get_layer(name).get_weights()
        np.testing.assert_array_equal(w, kernel.transpose(3, 2, 0, 1))  # HWIO -> OIHW, conv by conv
        np.testing.assert_array_equal(b, bias)
        assert not np.array_equal(w, stock_w), name


def test_a_mismatching_export_is_refused(model, images, tmp_path, monkeypatch):
    from onnx import numpy_helper

    real = export_onnx.export_u2netp

    def wrong_weight(m, out, template):
        """The export with one bias off, as a mis-mapped weight would leave it."""
        real(m, out, template)
        graph_model = onnx.load(str(out))
        outconv = next(n for n in graph_model.graph.node if n.op_type == "Conv" and n.input[1].startswith("outconv"))
        bias = next(i for i in graph_model.graph.initializer if i.name == outconv.input[2])
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(0.5), bias.name))
        onnx.save(graph_model, str(out))
        return out

    monkeypatch.setattr(export_onnx, "export_u2netp", wrong_weight)
    with pytest.raises(ExportError, match="differs from Keras at 160x160"):
        export_onnx.export_checked(model, tmp_path / "m.onnx", [160], images=images[1:2], tolerance=TOLERANCE,
                                   template=None)


def test_unet_is_not_exported():
    unet = inference_model(build_network(model_config(family="unet", unet_filters=[4, 8, 16])))
    with pytest.raises(ExportError, match="model.family u2netp only"):
        export_u2netp(unet, "unused.onnx", None)


@pytest.mark.parametrize("refine", [None, {"flip": True, "main_object": True, "sharpen": 3.0}])
def test_the_served_pyfunc_runs_the_onnx_export(model, images, exported, refine):
    """... refined as export chose (the serving config carries it), giving Keras' 8-bit mask."""
    import base64
    import io

    import pandas as pd
    from PIL import Image

    from bgremoval.serving.config import ServingConfig
    from bgremoval.serving.pyfunc import BackgroundRemover
    from bgremoval.serving.refine import Refine, Refined
    from bgremoval.serving.render import png_bytes

    refine = Refine.none() if refine is None else Refine.from_dict(refine)
    config = serving_config(runtime="onnxruntime", model_file="model.onnx", size=160, refine=refine)
    remover = BackgroundRemover()  # as MLflow loads it: the served file as artifact `model`, the config as model_config
    remover.load_context(SimpleNamespace(artifacts={"model": str(exported)}, model_config=config.to_dict()))
    assert ServingConfig.from_dict(config.to_dict()) == config and remover.served.config.refine == refine
    assert isinstance(remover.served.network, OnnxSegmenter) and remover.served.network.size == 160
    predictor = remover.served.predictor()
    if refine == Refine.none():
        assert predictor is remover.served.network
    else:
        assert isinstance(predictor, Refined) and predictor.predict is remover.served.network and predictor.size == 160
    example = png_bytes(Image.fromarray(images[0]))
    out = remover.predict(None, pd.DataFrame({"image": [base64.b64encode(example).decode()]}), params={"output": "mask"})
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(out["png"][0]))), np.float32)
    keras_mask = Refined(_keras_at(model, 160), refine)(images[0]) * 255
    assert served.shape == images[0].shape[:2] and np.abs(served - keras_mask).max() <= 1.0  # same 8-bit mask
