"""train: fine-tune (or train) the network on the augment stage's shards, tracked in MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import mlflow
import pandas as pd

from bgremoval import tracking
from bgremoval.model.network import ModelConfig
from bgremoval.training.fit import TrainConfig
from bgremoval.training.session import prediction_grid, train_tracked
from bgremoval.training.tune import apply_overrides
from stages.common import run, start


def main() -> int:
    params = start("train")
    seed, paths = params["base"]["seed"], params["paths"]
    keras.utils.set_random_seed(seed)
    # tune's best values for the keys params.yaml lists under tune.apply override train:/model:.
    tuned = json.loads(Path(paths["best_params"]).read_text())
    model_cfg = apply_overrides("model", ModelConfig(**params["model"]), tuned["apply"])
    train_cfg = apply_overrides("train", TrainConfig(**params["train"]), tuned["apply"])
    shards, models, reports = Path(paths["augmented"]), Path(paths["models"]), Path(paths["reports"])
    lineage = {"git.commit": tracking.git_commit(Path.cwd()), "tune.best_trial": f"{tuned['study']}#{tuned['trial']}",
               "dvc.augmented_md5": tracking.dvc_out_hash(Path("dvc.lock"), "augment", paths["augmented"]) or "unknown",
               "data.sha256": tracking.fingerprint(list(shards.glob("*.tfrecord")))}

    tracking.configure(params["mlflow"]["tracking_uri"], params["mlflow"]["experiment"])
    trained = train_tracked(model_cfg, train_cfg, shards, seed, Path(paths["checkpoints"]),
                            pd.read_parquet(paths["manifest"]), Path(paths["manifest"]), lineage)

    models.mkdir(parents=True, exist_ok=True)
    trained.model.save(models / "model.keras")
    reports.mkdir(parents=True, exist_ok=True)
    prediction_grid(trained.model, shards, train_cfg.size).save(reports / "train_predictions.png")
    (reports / "train.json").write_text(json.dumps(trained.summary, indent=2))
    with tracking.run(run_id=trained.summary["run_id"]):
        mlflow.log_artifact(str(reports / "train_predictions.png"))
    return 0


if __name__ == "__main__":
    run(main)
