"""register: put the trained model in the MLflow Model Registry and let the champion gate decide its alias."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient
from PIL import Image

from bgremoval import registry, serving, tracking
from bgremoval.export import ExportError, u2netp_core
from bgremoval.quantize import ServedOnnx, build_served_onnx, gate_metrics
from bgremoval.imageio import load_rgb
from bgremoval.refine import Refine
from stages.common import run, start

log = logging.getLogger("stages.register")


def example_png(path: Path, max_pixels: int, side: int = 64) -> bytes:
    """A small real test image: the served model's input example (MLflow runs it once when logging)."""
    image = Image.fromarray(load_rgb(path, max_pixels))
    image.thumbnail((side, side))
    return serving.png_bytes(image)


def served_tags(served: ServedOnnx | None) -> dict[str, str]:
    """How the registered model is served, as version tags (the int8 check's scores are on val)."""
    if served is None:
        return {"runtime": "keras"}
    tags = {"runtime": "onnxruntime", "onnx.int8": str(served.quantized).lower(), "onnx.reason": served.reason,
            "onnx.max_abs_vs_keras": f"{served.check.max_abs:.2e}"}
    if served.float_nodes:
        tags["onnx.int8_float_nodes"] = ",".join(served.float_nodes)
    for prefix, metrics in (("val.onnx_f32", served.metrics_f32), ("val.onnx_int8", served.metrics_int8)):
        tags |= {f"{prefix}.{k}": f"{v:.6f}" for k, v in (metrics or {}).items()}
    return tags


def split_rows(manifest: pd.DataFrame, name: str) -> pd.DataFrame:
    return manifest[manifest["split"] == name].reset_index(drop=True)


def served_onnx(model_file: Path, size: int, refine: Refine, manifest: pd.DataFrame, params: dict, out_dir: Path):
    """The ONNX file to serve (U²-NetP only; int8 if it keeps quality on val), or None to serve with Keras."""
    cfg, max_pixels = params["serve"], params["prepare"]["max_pixels"]
    if cfg["runtime"] != "onnxruntime":
        return None
    model = serving.load_keras(model_file)
    try:
        u2netp_core(model)
    except ExportError as exc:
        log.info("%s; it is served with Keras", exc)
        return None
    images = lambda name, n: [load_rgb(Path(p), max_pixels) for p in split_rows(manifest, name)["image_path"].head(n)]  # noqa: E731
    # int8 or float32 is a choice, so val decides it, like every other choice; test only reports.
    holdout = split_rows(manifest, "val")
    if holdout.empty:
        log.warning("no val split: the int8 check scores the test split instead")
        holdout = split_rows(manifest, "test")
    return build_served_onnx(model, out_dir, size, check_images=images("test", 4), quantize=cfg["quantize"],
                             calibration=images("train", cfg["calibration_images"]), holdout=holdout,
                             max_pixels=max_pixels, metric=params["register"]["metric"], max_loss=cfg["max_int8_loss"],
                             outlier_ratio=float(cfg["int8_outlier_ratio"]), refine=refine,
                             tolerance=cfg["onnx_tolerance"], template=params["model"]["onnx_path"])


def main() -> int:
    params = start("register")
    cfg, paths = params["register"], params["paths"]
    reports, max_pixels = Path(paths["reports"]), params["prepare"]["max_pixels"]
    manifest = pd.read_parquet(paths["manifest"])
    test = split_rows(manifest, "test")

    metrics = json.loads((reports / "metrics.json").read_text())
    model_file, size = Path(paths["models"]) / "model.keras", int(metrics["size"])  # the size evaluate scored (tuned or evaluate.size)
    refine = Refine.from_dict(metrics.get("refine"))  # and the refinement it chose on val
    tmp = tempfile.TemporaryDirectory()
    served = served_onnx(model_file, size, refine, manifest, params, Path(tmp.name))
    metrics, keras_tags = gate_metrics(metrics, served, test, size, max_pixels, refine)

    tracking.configure(params["mlflow"]["tracking_uri"], params["mlflow"]["experiment"])
    record = registry.register_run(
        MlflowClient(), cfg["model_name"],
        run_id=json.loads((reports / "train.json").read_text())["run_id"],
        model_file=model_file, onnx_file=served.path if served else None,
        extra_tags=served_tags(served) | keras_tags,
        metrics=metrics,
        test=test, size=size, refine=refine, max_pixels=max_pixels,
        serve_max_pixels=params["serve"]["max_pixels"], serve_max_request_mb=params["serve"]["max_request_mb"],
        example=example_png(Path(test["image_path"].iloc[0]), max_pixels),
        metric=cfg["metric"], min_delta=cfg["min_delta"], require_beats_baseline=cfg["require_beats_baseline"],
        lock=os.environ.get("BGREMOVAL_REGISTRY_LOCK") or cfg["lock"],
    )
    tmp.cleanup()
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "registered.json").write_text(json.dumps(record.to_dict(), indent=2))
    log.info("%s version %s -> @%s: %s", record.name, record.version, record.alias, record.reason)
    log.info("serve it: mlflow models serve -m models:/%s@champion --env-manager local -p 5001", record.name)
    return 0


if __name__ == "__main__":
    run(main)
