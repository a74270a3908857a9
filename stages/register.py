"""register: put the trained model in the MLflow Model Registry and let the champion gate decide its alias."""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path

import keras
import pandas as pd
from mlflow.tracking import MlflowClient
from PIL import Image

from bgremoval import registry, serving, tracking
from bgremoval.export import ExportError, export_checked, u2netp_core
from bgremoval.imageio import load_rgb
from stages.common import start

log = logging.getLogger("stages.register")


def example_png(path: Path, max_pixels: int, side: int = 64) -> bytes:
    """A small real test image: the served model's input example (MLflow runs it once when logging)."""
    image = Image.fromarray(load_rgb(path, max_pixels))
    image.thumbnail((side, side))
    return serving.png_bytes(image)


def onnx_export(model_file: Path, size: int, test: pd.DataFrame, cfg: dict, template, max_pixels: int, out_dir: Path):
    """The served ONNX (U²-NetP only), checked against Keras on test images; None = serve with Keras."""
    if cfg["runtime"] != "onnxruntime":
        return None
    model = keras.models.load_model(model_file, compile=False)
    try:
        u2netp_core(model)
    except ExportError as exc:
        log.info("%s; it is served with Keras", exc)
        return None
    images = [load_rgb(Path(p), max_pixels) for p in test["image_path"].head(4)]
    export_checked(model, out_dir / "model.onnx", size, images, cfg["onnx_tolerance"], template)
    return out_dir / "model.onnx"


def main() -> int:
    params = start("register")
    cfg, paths = params["register"], params["paths"]
    reports, max_pixels = Path(paths["reports"]), params["prepare"]["max_pixels"]
    manifest = pd.read_parquet(paths["manifest"])
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)

    model_file, size = Path(paths["models"]) / "model.keras", params["evaluate"]["size"]
    tmp = tempfile.TemporaryDirectory()
    onnx_file = onnx_export(model_file, size, test, params["serve"], params["model"]["onnx_path"], max_pixels, Path(tmp.name))

    tracking.configure(params["mlflow"]["tracking_uri"], params["mlflow"]["experiment"])
    record = registry.register_run(
        MlflowClient(), cfg["model_name"],
        run_id=json.loads((reports / "train.json").read_text())["run_id"],
        model_file=model_file, onnx_file=onnx_file,
        metrics=json.loads((reports / "metrics.json").read_text()),
        test=test, size=size, max_pixels=max_pixels,
        serve_max_pixels=params["serve"]["max_pixels"],
        example=example_png(Path(test["image_path"].iloc[0]), max_pixels),
        metric=cfg["metric"], min_delta=cfg["min_delta"], require_beats_baseline=cfg["require_beats_baseline"],
    )
    tmp.cleanup()
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "registered.json").write_text(json.dumps(record.to_dict(), indent=2))
    log.info("%s version %s -> @%s: %s", record.name, record.version, record.alias, record.reason)
    log.info("serve it: mlflow models serve -m models:/%s@champion --env-manager local -p 5001", record.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
