"""register: the served model into the MLflow Model Registry; the champion gate decides its alias on
evaluate's scores (reports/metrics.json) against the champion's on the same test images."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from bgremoval import tracking
from bgremoval.data.split import REFERENCE
from bgremoval.pictures import thumbnail_png
from bgremoval.registry.gate import side_by_side
from bgremoval.registry.versions import RegisterConfig, register_served
from stages.common import run, start

log = logging.getLogger("stages.register")


def main() -> int:
    params = start("register")
    cfg = RegisterConfig.from_params(params)
    paths, reports = params["paths"], Path(params["paths"]["reports"])
    manifest = pd.read_parquet(paths["manifest"])
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    read = lambda name: json.loads((reports / name).read_text())  # noqa: E731
    has_reference = (manifest["split"] == REFERENCE).any()

    tracking.configure(params["mlflow"]["tracking_uri"], params["mlflow"]["experiment"])
    record = register_served(
        MlflowClient(), cfg=cfg, run_id=read("train.json")["run_id"], served_dir=Path(paths["served"]),
        metrics=read("metrics.json"), baseline=read("baseline.json"), test=test,
        test_dataset=tracking.split_dataset(manifest, "test", paths["manifest"]),
        example=thumbnail_png(Path(test["image_path"].iloc[0]), cfg.max_pixels),
        reference_dataset=tracking.split_dataset(manifest, REFERENCE, paths["manifest"]) if has_reference else None)

    scores = side_by_side(read("metrics.json"), read("baseline.json"))
    (reports / "registered.json").write_text(json.dumps(record.to_dict() | {"scores": scores}, indent=2))
    log.info("%s version %s -> @%s: %s", record.name, record.version, record.alias, record.reason)
    log.info("against stock U²-NetP on test: %s", ", ".join(
        f"{k} {v['model']:.4f} vs {v['stock_u2netp']:.4f}" for k, v in scores.items()))
    log.info("%s", record.serve_hint())
    return 0


if __name__ == "__main__":
    run(main)
