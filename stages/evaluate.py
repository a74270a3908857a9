"""evaluate: the served model (models/served/, exactly as it will be served) on the test split."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import pandas as pd

from bgremoval import tracking
from bgremoval.scoring.metrics import HEADLINE, summarise
from bgremoval.scoring.reports import cutout_grid, iou_histogram, pr_table, worst_grid
from bgremoval.scoring.score import score
from bgremoval.serving.served import Served
from stages.common import run, start

log = logging.getLogger("stages.evaluate")


def main() -> int:
    params = start("evaluate")
    cfg, paths, max_pixels = params["evaluate"], params["paths"], params["prepare"]["max_pixels"]
    reports = Path(paths["reports"])
    manifest = pd.read_parquet(paths["manifest"])
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    served = Served.from_folder(Path(paths["served"]))

    table, scores = score(test, served, max_pixels, progress="evaluate")
    summary = summarise(scores)
    metrics = {k: summary[k] for k in HEADLINE} | {"size": served.config.size, "ms_per_image": float(table["ms"].median())}
    baseline = pd.read_csv(reports / "baseline_images.csv").set_index("name")["iou"]

    (reports / "metrics.json").write_text(json.dumps(metrics, indent=2))
    table.assign(baseline_iou=table["name"].map(baseline)).sort_values("iou").to_csv(
        reports / "eval_images.csv", index=False, float_format="%.4f")
    pr_table(scores).to_csv(reports / "pr_curve.csv", index=False, float_format="%.4f")
    iou_histogram(table["iou"]).to_csv(reports / "iou_hist.csv", index=False)
    worst_grid(table, served, cfg["worst"], max_pixels).save(reports / "eval_worst.png")
    cutout_grid(test, served, cfg["cutouts"], max_pixels).save(reports / "cutouts.png")

    tracking.configure(params["mlflow"]["tracking_uri"], params["mlflow"]["experiment"])
    with tracking.run(run_id=json.loads((reports / "train.json").read_text())["run_id"]):
        mlflow.log_metrics({f"test/{k}": v for k, v in summary.items()} | {"test/ms_per_image": metrics["ms_per_image"]})
        for name in ("metrics.json", "eval_images.csv", "eval_worst.png", "cutouts.png"):
            mlflow.log_artifact(str(reports / name), "evaluation")
    log.info("test (%d images): %s", len(test), {k: round(v, 4) for k, v in metrics.items()})
    return 0


if __name__ == "__main__":
    run(main)
