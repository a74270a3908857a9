"""tune: an Optuna study over the search space in params.yaml; every trial a nested MLflow run.

With tune.latency the study has two objectives: the val metric at the serving size (evaluate.size, which
the space may search), scored on the val images at their own resolution, and the forward time per image at
that size. The Pareto front is logged; tune.max_metric_loss picks the trade-off train and the registered
model use."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import keras
import mlflow
import optuna
import pandas as pd

from bgremoval import tracking
from bgremoval.evaluate import evaluate
from bgremoval.metrics import summarise
from bgremoval.serving import Segmenter
from bgremoval.train import (
    ModelConfig, TrainConfig, build_network, clean_logs, datasets, evaluate_val, fit, inference_model, shard_stats,
    steps_per_epoch,
)
from bgremoval.tune import (
    DONE, PruneOnMetric, StudyConfig, apply_overrides, best_params, count, forward_ms, open_study, optimise, study_key,
    tuned_section, write_plots,
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
    metric, latency = tune["metric"], bool(tune["latency"])
    data_id = tracking.fingerprint(list(shards.glob("*.tfrecord")))
    budget = {"epochs": tune["epochs"], "steps": tune["steps_per_epoch"], "model": asdict(base_model), "train": asdict(base_train)}
    if latency:  # the second objective and the size it is measured at change what a trial means
        budget |= {"latency": True, "evaluate": params["evaluate"]}
        manifest = pd.read_parquet(paths["manifest"])
        val_rows = manifest[manifest["split"] == "val"].reset_index(drop=True)
    cfg = StudyConfig(
        storage=tune["storage"],
        study_name=f"{tune['study_name']}-{study_key(tune['space'], budget, data_id, seed)}",
        n_trials=tune["n_trials"],
        max_failed=tune["max_failed"],
        metric=metric,
        pruner=tune["pruner"],
        heartbeat_interval=tune["heartbeat_interval"],
        latency=latency,
    )
    pos_weight = shard_stats(shards)["pos_weight"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(cfg, seed)
    log.info("study %s in %s: %d of %d trials done", cfg.study_name, cfg.storage, count(study, DONE), cfg.n_trials)

    def train_one(trial: optuna.Trial, values: dict, checkpoints: Path) -> float | tuple[float, float]:
        keras.utils.set_random_seed(seed + trial.number)
        model_cfg = apply_overrides("model", base_model, values)
        train_cfg = apply_overrides("train", base_train, values)
        network = build_network(model_cfg)
        train_ds, val_ds = datasets(shards, train_cfg.size, train_cfg.batch_size, seed)
        rename = lambda logs: clean_logs(network, logs)  # noqa: E731
        callbacks = [tracking.EpochLogger(rename)] + ([] if latency else [PruneOnMetric(trial, rename, metric)])
        fit(network, train_ds, val_ds, train_cfg, pos_weight, steps_per_epoch(train_cfg, shards), checkpoints, callbacks)
        if not latency:
            return evaluate_val(network, val_ds)[metric.split("/", 1)[1]]
        # Both objectives where the registered model works: at the serving size, on whole val images.
        size = int(tuned_section("evaluate", params["evaluate"], values)["size"])
        model = inference_model(network)
        _, scores = evaluate(val_rows, Segmenter(model, size), params["prepare"]["max_pixels"])
        quality, ms = summarise(scores)[metric.split("/", 1)[1]], forward_ms(model.predict_on_batch, size)
        mlflow.log_metrics({f"serving/{metric}": quality, "serving/ms_per_image": ms, "serving/size": size})
        return quality, ms

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
        best = best_params(study, float(tune["max_metric_loss"]))
        states = {s.name.lower(): count(study, (s,)) for s in optuna.trial.TrialState}
        mlflow.log_metrics({f"best/{metric}": best["value"], **{f"trials/{k}": v for k, v in states.items()}})
        mlflow.set_tag("best_trial", best["trial"])
        if latency:
            mlflow.log_metric("best/ms_per_image", best["latency_ms"])
            mlflow.log_table(pd.DataFrame([{"trial": t["trial"], metric: t["value"], "ms_per_image": t["latency_ms"],
                                            **t["params"]} for t in best["pareto_front"]]), "pareto_front.json")
        for plot in write_plots(study, Path(paths["reports"]) / "tune", metric):
            mlflow.log_artifact(str(plot))

    best["apply"] = {k: v for k, v in best["params"].items() if k in tune["apply"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(best, indent=2))
    if latency:
        for t in best["pareto_front"]:
            log.info("Pareto front: trial %d %s = %.4f at %.1f ms/image %s", t["trial"], metric, t["value"], t["latency_ms"], t["params"])
    log.info("chosen trial %d: %s = %.4f; train, evaluate and register will use %s", best["trial"], metric, best["value"], best["apply"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
