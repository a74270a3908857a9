"""evaluate: the served model (models/served/, exactly as it will be served) on the test split, and on the
reference photos of other kinds when there are any (prepare.reference)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import pandas as pd

from bgremoval import tracking
from bgremoval.data.split import REFERENCE
from bgremoval.scoring.metrics import summarise
from bgremoval.scoring.reports import EvaluateConfig, write_test_reports
from bgremoval.scoring.score import headline, reported, score
from bgremoval.serving.served import Served
from stages.common import run, start

log = logging.getLogger("stages.evaluate")


def main() -> int:
    params = start("evaluate")
    cfg, paths = EvaluateConfig.from_params(params), params["paths"]
    reports, max_pixels = cfg.reports, cfg.max_pixels
    manifest = pd.read_parquet(paths["manifest"])
    test, reference = (manifest[manifest["split"] == s].reset_index(drop=True) for s in ("test", REFERENCE))
    served = Served.from_folder(Path(paths["served"]))

    table, scores = score(test, served, max_pixels, progress="evaluate", dis=True)
    summary = summarise(scores)
    metrics = reported(summary) | {"size": served.config.size, "ms_per_image": float(table["ms"].median())}
    if not reference.empty:  # what the fine-tune may have forgotten, on photos of other kinds
        metrics["reference"] = headline(reference, served, max_pixels, "reference")

    (reports / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_test_reports(table, scores, rows=test, predict=served,
                       baseline_iou=pd.read_csv(reports / "baseline_images.csv").set_index("name")["iou"], cfg=cfg)
    tracking.configure(params["mlflow"]["tracking_uri"], params["mlflow"]["experiment"])
    with tracking.run(run_id=json.loads((reports / "train.json").read_text())["run_id"]):
        mlflow.log_metrics({f"test/{k}": v for k, v in summary.items()} | {"test/ms_per_image": metrics["ms_per_image"]}
                           | {f"reference/{k}": v for k, v in metrics.get("reference", {}).items()})
        for name in ("metrics.json", "eval_images.csv", "eval_worst.png", "cutouts.png"):
            mlflow.log_artifact(str(reports / name), "evaluation")
    log.info("test (%d images): %s", len(test), {k: round(v, 4) for k, v in metrics.items() if k != "reference"})
    return 0


if __name__ == "__main__":
    run(main)
