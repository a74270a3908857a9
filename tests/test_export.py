"""ONNX export: fine-tuned U²-NetP weights written back into rembg's graph, checked against Keras."""

from __future__ import annotations

import numpy as np
import pytest

from bgremoval.export import ExportError, OnnxSegmenter, compare, export_checked, export_u2netp
from bgremoval.train import ModelConfig, build_network, inference_model
from tests.conftest import disc_image


def _fine_tuned(seed: int = 0):
    """Stock U²-NetP with every conv nudged, as fine-tuning would: the export must carry the new weights."""
    model = inference_model(build_network(ModelConfig(family="u2netp")))
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
    from sklearn.datasets import load_sample_images

    return [disc_image(90, 120)[0], *load_sample_images().images]


def test_export_matches_keras(model, images, tmp_path):
    check = export_checked(model, tmp_path / "m.onnx", 160, images)
    assert check.mean_abs < 1e-6 and check.max_abs < 1e-3 and check.share_over <= 1e-4
    seg = OnnxSegmenter(tmp_path / "m.onnx", 160)
    prob = seg(images[1])
    assert prob.shape == images[1].shape[:2] and 0 <= prob.min() and prob.max() <= 1


def test_export_carries_the_new_weights_not_the_stock_ones(model, images, tmp_path):
    export_u2netp(model, tmp_path / "m.onnx", 160)
    stock = inference_model(build_network(ModelConfig(family="u2netp")))
    # The stock model is not what was exported: the comparison must see that.
    check = compare(stock, tmp_path / "m.onnx", 160, images[1:2])
    assert check.max_abs > 1e-2 and not check.passes(1e-4)


def test_a_mismatching_export_is_refused(model, images, tmp_path, monkeypatch):
    import bgremoval.export as export

    other = _fine_tuned(seed=1)
    real = export.export_u2netp
    monkeypatch.setattr(export, "export_u2netp", lambda m, out, size, template=None: real(other, out, size, template))
    with pytest.raises(ExportError, match="differs from Keras"):
        export.export_checked(model, tmp_path / "m.onnx", 160, images[1:2])


def test_unet_is_not_exported():
    unet = inference_model(build_network(ModelConfig(family="unet", unet_filters=[4, 8, 16])))
    with pytest.raises(ExportError, match="model.family u2netp only"):
        export_u2netp(unet, "unused.onnx", 64)


@pytest.mark.parametrize("refine", [None, {"flip": True, "main_object": True, "sharpen": 3.0}])
def test_the_served_pyfunc_runs_the_onnx_export(model, images, tmp_path, refine):
    """... refined as the evaluate stage chose (the model config carries it)."""
    import base64
    import io

    import mlflow
    import pandas as pd
    from PIL import Image

    from bgremoval import serving
    from bgremoval.refine import Refine, Refined

    refine = Refine.from_dict(refine)
    model.save(tmp_path / "model.keras")
    export_checked(model, tmp_path / "model.onnx", 160, images)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.create_experiment("onnx", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment("onnx")
    example = serving.png_bytes(Image.fromarray(images[0]))
    with mlflow.start_run():
        info = serving.log_model(tmp_path / "model.keras", 160, 10**6, example, onnx_file=tmp_path / "model.onnx",
                                 max_request_mb=50, refine=refine)
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    assert loaded.model_config["runtime"] == "onnxruntime" and Refine.from_dict(loaded.model_config["refine"]) == refine
    segmenter = loaded.unwrap_python_model().segmenter
    if refine == Refine():
        assert isinstance(segmenter, OnnxSegmenter)
    else:
        assert isinstance(segmenter, Refined) and isinstance(segmenter.predict, OnnxSegmenter) and segmenter.size == 160
    out = loaded.predict(pd.DataFrame({"image": [base64.b64encode(example).decode()]}), params={"output": "mask"})
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(out["png"][0]))), np.float32)
    keras_mask = Refined(serving.Segmenter(model, 160), refine)(images[0]) * 255
    assert served.shape == images[0].shape[:2] and np.abs(served - keras_mask).max() <= 1.0  # same 8-bit mask
