"""tune: an Optuna study over the search space in params.yaml; every trial a nested MLflow run."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import keras
import mlflow
import optuna

from bgremoval import tracking
from bgremoval.train import (
    ModelConfig, TrainConfig, build_network, clean_logs, datasets, evaluate_val, fit, shard_stats, steps_per_epoch,
)
from bgremoval.tune import (
    DONE, PruneOnMetric, StudyConfig, apply_overrides, best_params, count, open_study, optimise, study_key, write_plots,
)
from stages.common import start

log = logging.getLogger("stages.tune")


def main() -> int:
    params = start("tune")
    seed, paths, tune = params["base"]["seed"], params["paths"], params["tune"]
    shards, out = Path(paths["augmented"]), Path(paths["best_params"])
    base_model = ModelConfig(**params["model"])
    # Trials train briefly: the budget's epochs and steps replace train's.
    base_train = TrainConfig(**{**params["train"], "epochs": tune["epochs"], "steps_per_epoch": tune["steps_per_epoch"], "size": tune["size"]})
    metric = tune["metric"]
    data_id = tracking.fingerprint(list(shards.glob("*.tfrecord")))
    budget = {"epochs": tune["epochs"], "steps": tune["steps_per_epoch"], "model": asdict(base_model), "train": asdict(base_train)}
    cfg = StudyConfig(
        storage=tune["storage"],
        study_name=f"{tune['study_name']}-{study_key(tune['space'], budget, data_id, seed)}",
        n_trials=tune["n_trials"],
        max_failed=tune["max_failed"],
        metric=metric,
        pruner=tune["pruner"],
        heartbeat_interval=tune["heartbeat_interval"],
    )
    pos_weight = shard_stats(shards)["pos_weight"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(cfg, seed)
    log.info("study %s in %s: %d of %d trials done", cfg.study_name, cfg.storage, count(study, DONE), cfg.n_trials)

    def train_one(trial: optuna.Trial, values: dict, checkpoints: Path) -> float:
        keras.utils.set_random_seed(seed + trial.number)
        model_cfg = apply_overrides("model", base_model, values)
        train_cfg = apply_overrides("train", base_train, values)
        network = build_network(model_cfg)
        train_ds, val_ds = datasets(shards, train_cfg.size, train_cfg.batch_size, seed)
        rename = lambda logs: clean_logs(network, logs)  # noqa: E731
        fit(network, train_ds, val_ds, train_cfg, pos_weight, steps_per_epoch(train_cfg, shards), checkpoints,
            [tracking.EpochLogger(rename), PruneOnMetric(trial, rename, metric)])
        return evaluate_val(network, val_ds)[metric.split("/", 1)[1]]

    tracking.configure(params["mlflow"]["tracking_uri"], params["mlflow"]["experiment"])
    parent_id = study.user_attrs.get("mlflow_parent_run_id")  # a resumed study logs into the same parent
    with mlflow.start_run(run_id=parent_id, run_name=None if parent_id else f"tune-{cfg.study_name}") as parent:
        study.set_user_attr("mlflow_parent_run_id", parent.info.run_id)
        if parent_id is None:
            mlflow.log_params({"n_trials": cfg.n_trials, "metric": metric, "study": cfg.study_name,
                               "storage": cfg.storage.split("@")[-1], "epochs_per_trial": tune["epochs"],
                               "steps_per_epoch": tune["steps_per_epoch"], "pruner": json.dumps(cfg.pruner)})
            mlflow.log_dict(tune["space"], "search_space.json")
            mlflow.set_tags({"stage": "tune", "git.commit": tracking.git_commit(Path.cwd()), "data.sha256": data_id})
        optimise(study, cfg, tune["space"], train_one)
        best = best_params(study)
        states = {s.name.lower(): count(study, (s,)) for s in optuna.trial.TrialState}
        mlflow.log_metrics({f"best/{metric}": best["value"], **{f"trials/{k}": v for k, v in states.items()}})
        mlflow.set_tag("best_trial", best["trial"])
        for plot in write_plots(study, Path(paths["reports"]) / "tune"):
            mlflow.log_artifact(str(plot))

    best["apply"] = {k: v for k, v in best["params"].items() if k in tune["apply"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(best, indent=2))
    log.info("best trial %d: %s = %.4f; train will use %s", best["trial"], metric, best["value"], best["apply"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
