"""train: fine-tune (or train) the network on the augment stage's shards, tracked in MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import mlflow
import pandas as pd

from bgremoval import tracking
from bgremoval.training.distribute import make_strategy
from bgremoval.training.session import TrainSetup, prediction_grid, train_tracked
from stages.common import run, start


def main() -> int:
    params = start("train")
    paths = params["paths"]
    # tune's best values for the keys params.yaml lists under tune.apply override train:/model:.
    tuned = json.loads(Path(paths["best_params"]).read_text())
    setup = TrainSetup.from_params(params, tuned["apply"])
    strategy = make_strategy(setup.distribute)  # before anything runs on TensorFlow
    keras.utils.set_random_seed(setup.seed)
    models, reports = Path(paths["models"]), Path(paths["reports"])
    lineage = {"git.commit": tracking.git_commit(Path.cwd()), "tune.best_trial": f"{tuned['study']}#{tuned['trial']}",
               "dvc.augmented_md5": tracking.dvc_out_hash(Path("dvc.lock"), "augment", paths["augmented"]) or "unknown",
               "data.sha256": tracking.fingerprint(list(setup.shards.glob("*.tfrecord")))}

    tracking.configure(params["mlflow"]["tracking_uri"], params["mlflow"]["experiment"])
    trained = train_tracked(setup, manifest=pd.read_parquet(setup.manifest), lineage=lineage, strategy=strategy)

    models.mkdir(parents=True, exist_ok=True)
    trained.model.save(models / "model.keras")
    reports.mkdir(parents=True, exist_ok=True)
    prediction_grid(trained.model, setup.shards, setup.train.size).save(reports / "train_predictions.png")
    (reports / "train.json").write_text(json.dumps(trained.summary, indent=2))
    with tracking.run(run_id=trained.summary["run_id"]):
        mlflow.log_artifact(str(reports / "train_predictions.png"))
    return 0


if __name__ == "__main__":
    run(main)
