"""The tuning job as params describe it: which study, what one trial trains and scores, and the MLflow
parent run its trials nest under. The tune stage and every `bgremoval tune-worker` build the same job
from the same params and data, so they join the same study."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna

from bgremoval import tracking
from bgremoval.train import ModelConfig, TrainConfig
from bgremoval.tune import StudyConfig, study_key, study_lock

STORAGE_ENV = "BGREMOVAL_TUNE_STORAGE"  # wins over tune.storage, as MLFLOW_TRACKING_URI over mlflow.tracking_uri


def storage_url(params: dict) -> str:
    """Where the study lives: $BGREMOVAL_TUNE_STORAGE, else tune.storage."""
    return os.environ.get(STORAGE_ENV) or params["tune"]["storage"]


@dataclass
class TuneJob:
    """Everything a trial needs, resolved once from params."""

    params: dict[str, Any]
    cfg: StudyConfig
    shards: Path
    data_id: str
    base_model: ModelConfig
    base_train: TrainConfig

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "TuneJob":
        seed, paths, tune = params["base"]["seed"], params["paths"], params["tune"]
        shards = Path(paths["augmented"])
        if not (shards / "stats.json").exists():
            raise FileNotFoundError(f"{shards}: no augmented shards; run `dvc repro augment` (or `dvc pull`) first")
        base_model = ModelConfig(**params["model"])
        # Trials train briefly: the budget's epochs and steps replace train's.
        base_train = TrainConfig(**{**params["train"], "epochs": tune["epochs"], "steps_per_epoch": tune["steps_per_epoch"],
                                    "size": tune["size"]})
        data_id = tracking.fingerprint(list(shards.glob("*.tfrecord")))
        budget = {"epochs": tune["epochs"], "steps": tune["steps_per_epoch"], "model": asdict(base_model), "train": asdict(base_train)}
        if tune["latency"]:  # the second objective and the size it is measured at change what a trial means
            budget |= {"latency": True, "evaluate.size": params["evaluate"]["size"]}
        cfg = StudyConfig(
            storage=storage_url(params),
            study_name=f"{tune['study_name']}-{study_key(tune['space'], budget, data_id, seed)}",
            n_trials=tune["n_trials"],
            max_failed=tune["max_failed"],
            metric=tune["metric"],
            pruner=tune["pruner"],
            heartbeat_interval=tune["heartbeat_interval"],
            latency=bool(tune["latency"]),
        )
        return cls(params, cfg, shards, data_id, base_model, base_train)

    def train_one(self, trial: optuna.Trial, values: dict, checkpoints: Path) -> float | tuple[float, float]:
        """Train one trial's network briefly; its val metric (and, with latency, ms per image at its serving size)."""
        import keras
        import mlflow
        import pandas as pd

        from bgremoval.evaluate import evaluate
        from bgremoval.metrics import summarise
        from bgremoval.serving import Segmenter
        from bgremoval.train import (
            build_network, choose_blend, clean_logs, datasets, evaluate_val, fit, inference_model, positive_weight,
            steps_per_epoch,
        )
        from bgremoval.tune import PruneOnMetric, apply_overrides, forward_ms, tuned_section

        seed, metric = self.params["base"]["seed"], self.cfg.metric
        keras.utils.set_random_seed(seed + trial.number)
        model_cfg = apply_overrides("model", self.base_model, values)
        train_cfg = apply_overrides("train", self.base_train, values)
        network = build_network(model_cfg)
        pretrained = [w.copy() for w in network.get_weights()] if model_cfg.family == "u2netp" else None
        train_ds, val_ds = datasets(self.shards, train_cfg.size, train_cfg.batch_size, seed)
        rename = lambda logs: clean_logs(network, logs)  # noqa: E731
        callbacks = [tracking.EpochLogger(rename)] + ([] if self.cfg.latency else [PruneOnMetric(trial, rename, metric)])
        fit(network, train_ds, val_ds, train_cfg, positive_weight(train_cfg, self.shards),
            steps_per_epoch(train_cfg, self.shards), checkpoints, callbacks)
        if pretrained is not None:  # score what train would save: train.blend applies to trials too
            share, _ = choose_blend(network, pretrained, val_ds, train_cfg.blend)
            mlflow.log_metric("blend/share", share)
        if not self.cfg.latency:
            return evaluate_val(network, val_ds)[metric.split("/", 1)[1]]
        # Both objectives where the registered model works: at the serving size, on whole val images.
        size = int(tuned_section("evaluate", self.params["evaluate"], values)["size"])
        manifest = pd.read_parquet(self.params["paths"]["manifest"])
        val_rows = manifest[manifest["split"] == "val"].reset_index(drop=True)
        model = inference_model(network)
        _, scores = evaluate(val_rows, Segmenter(model, size), self.params["prepare"]["max_pixels"])
        quality, ms = summarise(scores)[metric.split("/", 1)[1]], forward_ms(model.predict_on_batch, size)
        mlflow.log_metrics({f"serving/{metric}": quality, "serving/ms_per_image": ms, "serving/size": size})
        return quality, ms

    def parent_run_id(self, study: optuna.Study) -> str:
        """The study's MLflow parent run: created (with the study's settings) by the first process to ask,
        under the storage's lock, so workers starting together share one."""
        import mlflow

        with study_lock(study):
            existing = study.user_attrs.get("mlflow_parent_run_id")
            if existing:
                return existing
            tune = self.params["tune"]
            with mlflow.start_run(run_name=f"tune-{self.cfg.study_name}") as parent:
                mlflow.log_params({"n_trials": self.cfg.n_trials, "metric": self.cfg.metric, "study": self.cfg.study_name,
                                   "storage": self.cfg.storage.split("@")[-1], "epochs_per_trial": tune["epochs"],
                                   "steps_per_epoch": tune["steps_per_epoch"], "pruner": json.dumps(self.cfg.pruner),
                                   "latency": self.cfg.latency, "max_metric_loss": tune["max_metric_loss"]})
                mlflow.log_dict(tune["space"], "search_space.json")
                mlflow.set_tags({"stage": "tune", "git.commit": tracking.git_commit(Path.cwd()), "data.sha256": self.data_id})
            study.set_user_attr("mlflow_parent_run_id", parent.info.run_id)
            return parent.info.run_id
