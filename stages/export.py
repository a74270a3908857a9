"""export: the served model, its set-up (size, refinement, int8) chosen on val: models/served/."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import pandas as pd

from bgremoval import tracking
from bgremoval.export.choose import ExportJob, export_served
from bgremoval.model.network import load_model
from stages.common import run, start

log = logging.getLogger("stages.export")


def main() -> int:
    params = start("export")
    paths, reports = params["paths"], Path(params["paths"]["reports"])
    manifest = pd.read_parquet(paths["manifest"])
    split = lambda name: manifest[manifest["split"] == name].reset_index(drop=True)  # noqa: E731
    model_file = Path(paths["models"]) / "distilled.keras"

    job = ExportJob.from_params(params)
    config, report = export_served(load_model(model_file), model_file, val=split("val"), calibration=split("train"),
                                   job=job)

    (reports / "export.json").write_text(json.dumps(report, indent=2))
    tracking.configure(params["mlflow"]["tracking_uri"], params["mlflow"]["experiment"])
    with tracking.run(run_id=json.loads((reports / "train.json").read_text())["run_id"]):
        # Tags, not params: re-exporting the same trained model with other export: settings changes them.
        mlflow.set_tags({"serving.size": config.size, "serving.refine": config.refine.name,
                         "serving.runtime": config.runtime, "serving.int8": config.int8})
        mlflow.log_artifact(str(reports / "export.json"))
    served_as = f"{config.runtime} at {config.size}², refine {config.refine.name}{', int8' if config.int8 else ''}"
    log.info("served: %s (%.1f MB) -> %s", served_as, report["served_mb"], paths["served"])
    return 0


if __name__ == "__main__":
    run(main)
