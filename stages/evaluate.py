"""evaluate: the trained model and stock U²-NetP on the test split, at the images' own resolution."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd

from bgremoval import tracking
from bgremoval import u2netp  # noqa: F401  (registers the layers a saved model is made of)
from bgremoval.evaluate import choose_refine, choose_size, error_overlay, evaluate, keras_predictor, refine_grid
from bgremoval.imageio import load_mask, load_rgb
from bgremoval.metrics import pr_curve, summarise
from bgremoval.refine import refined
from bgremoval.train import ModelConfig, build_network, inference_model
from bgremoval.tune import tuned_section
from bgremoval.viz import grid
from stages.common import run, start

log = logging.getLogger("stages.evaluate")


def main() -> int:
    params = start("evaluate")
    paths = params["paths"]
    # tune may have chosen the serving size (tune.apply: [evaluate.size]); the trade-off lives there.
    tuned = json.loads(Path(paths["best_params"]).read_text())["apply"]
    cfg = tuned_section("evaluate", params["evaluate"], tuned)
    reports, max_pixels = Path(paths["reports"]), params["prepare"]["max_pixels"]
    manifest = pd.read_parquet(paths["manifest"])
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)

    model = keras.models.load_model(Path(paths["models"]) / "model.keras", compile=False)
    val = manifest[manifest["split"] == "val"].reset_index(drop=True)
    val_by_size = {}
    if cfg["size_choices"]:  # the serving size, chosen on val with the weights that will be served
        size, val_by_size = choose_size(val, lambda s: keras_predictor(model, s), cfg["size_choices"], max_pixels,
                                        cfg["size_tolerance"], progress=True)
        if "evaluate.size" in tuned and tuned["evaluate.size"] != size:
            log.info("evaluate.size_choices: val picks %d over tune's %d", size, tuned["evaluate.size"])
        log.info("serving size %d (val IoU %s)", size, ", ".join(f"{s}: {m['iou']:.4f}" for s, m in val_by_size.items()))
        cfg["size"] = size
    # Then, at that size, the refinement of the mask (mirror averaging, the main object, sharper edges).
    choices = cfg["refine"]
    refine, val_by_refine = choose_refine(val, keras_predictor(model, cfg["size"]),
                                          refine_grid(choices["flip"], choices["main_object"], choices["sharpen"]),
                                          max_pixels, choices["tolerance"], progress=True)
    log.info("refinement %s (val IoU / MAE: %s)", refine.name,
             ", ".join(f"{n}: {m['iou']:.4f} / {m['mae']:.4f}" for n, m in val_by_refine.items()))
    ours = refined(keras_predictor(model, cfg["size"]), refine)
    table, scores = evaluate(test, ours, max_pixels, progress="evaluate")
    stock = keras_predictor(inference_model(build_network(ModelConfig(family="u2netp"))), cfg["baseline_size"])
    base_table, base_scores = evaluate(test, stock, max_pixels, progress="stock u2netp")

    metrics = {**summarise(scores), "baseline": summarise(base_scores), "n_images": len(test), "size": cfg["size"],
               "refine": refine.to_dict(), "val_by_refine": val_by_refine}
    if val_by_size:
        metrics["val_by_size"] = {str(s): m for s, m in val_by_size.items()}
    table["baseline_iou"] = base_table["iou"]
    table = table.sort_values("iou")  # worst first
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "metrics.json").write_text(json.dumps(metrics, indent=2))
    table.to_csv(reports / "eval_images.csv", index=False, float_format="%.4f")
    pd.DataFrame(pr_curve(scores)).to_csv(reports / "pr_curve.csv", index=False, float_format="%.4f")
    pd.DataFrame(pr_curve(base_scores)).to_csv(reports / "pr_curve_baseline.csv", index=False, float_format="%.4f")
    hist, edges = np.histogram(table["iou"], bins=10, range=(0, 1))
    pd.DataFrame({"iou": [f"{a:.1f}-{b:.1f}" for a, b in zip(edges, edges[1:])], "images": hist}).to_csv(reports / "iou_hist.csv", index=False)

    worst = table.head(cfg["worst"])
    tiles, labels = [], []
    for _, row in worst.iterrows():
        image = load_rgb(Path(row["image_path"]), max_pixels)
        truth = load_mask(Path(test.set_index("name").loc[row["name"], "mask_path"]), max_pixels) / 255
        tiles.append(error_overlay(image, ours(image), truth))
        labels.append(f"{row['name']} iou {row['iou']:.2f}")
    grid(tiles, labels, cols=4, tile=200).save(reports / "eval_worst.png")

    run_id = json.loads((reports / "train.json").read_text())["run_id"]
    tracking.configure(params["mlflow"]["tracking_uri"], params["mlflow"]["experiment"])
    with mlflow.start_run(run_id=run_id):  # the evaluation belongs to the training run it scores
        mlflow.log_metrics({f"test/{k}": v for k, v in metrics.items() if isinstance(v, float)})
        mlflow.log_metrics({f"baseline/{k}": v for k, v in metrics["baseline"].items()})
        for s, m in val_by_size.items():  # one curve in the MLflow UI: val IoU against the serving size
            mlflow.log_metric("size_choice/val_iou", m["iou"], step=s)
        mlflow.log_metric("serving_size", cfg["size"])
        mlflow.set_tag("serving_refine", refine.name)  # every choice's val scores: metrics.json, below
        for name in ("metrics.json", "eval_images.csv", "pr_curve.csv", "eval_worst.png"):
            mlflow.log_artifact(str(reports / name), "evaluation")
    log.info("test (%d images): %s | stock u2netp: %s", len(test),
             {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)},
             {k: round(v, 4) for k, v in metrics["baseline"].items()})
    return 0


if __name__ == "__main__":
    run(main)
