"""The tuning job as params describe it: which study, what one trial trains and scores, and the MLflow
parent run its trials nest under. The tune stage and every `bgremoval tune-worker` build the same job
from the same params and data and run it through the same `run_job`, so they join the same study."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import mlflow
import optuna

from optuna_integration import KerasPruningCallback

from bgremoval import tracking
from bgremoval.model.network import ModelConfig, build_network, inference_model
from bgremoval.settings import apply_overrides
from bgremoval.training.blend import choose_blend
from bgremoval.training.callbacks import EpochLogger
from bgremoval.training.fit import (
    TrainConfig, clean_logs, datasets, evaluate_val, fit, keras_log_name, positive_weight, steps_per_epoch, val_score,
)
from bgremoval.training.study import DONE, StudyConfig, count, open_study, queue_each_choice, study_key, study_lock
from bgremoval.training.trials import forward_ms, optimise

log = logging.getLogger(__name__)

STORAGE_ENV = "BGREMOVAL_TUNE_STORAGE"  # wins over tune.storage, as MLFLOW_TRACKING_URI over mlflow.tracking_uri


@dataclass
class TuneJob:
    """Everything a trial needs, resolved once from params."""

    cfg: StudyConfig
    tune: dict[str, Any]       # params' tune: section
    seed: int
    shards: Path
    data_id: str
    base_model: ModelConfig
    base_train: TrainConfig
    latency_size: int          # with tune.latency, trials are timed at this size (the largest serving size)
    tracking_uri: str          # mlflow.tracking_uri: the store the study's parent run and its trials go to
    experiment: str

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "TuneJob":
        seed, tune = params["base"]["seed"], params["tune"]
        shards = Path(params["paths"]["augmented"])
        if not (shards / "stats.json").exists():
            raise FileNotFoundError(f"{shards}: no augmented shards; run `dvc repro augment` (or `dvc pull`) first")
        base_model = ModelConfig(**params["model"])
        # Trials train briefly: the budget's epochs, steps and size replace train's.
        base_train = TrainConfig(**{**params["train"], "epochs": tune["epochs"], "steps_per_epoch": tune["steps_per_epoch"],
                                    "size": tune["size"]})
        data_id = tracking.fingerprint(list(shards.glob("*.tfrecord")))
        latency_size = max(params["export"]["sizes"])
        budget = {"epochs": tune["epochs"], "steps": tune["steps_per_epoch"], "model": asdict(base_model), "train": asdict(base_train)}
        if tune["latency"]:  # the second objective and the size it is measured at change what a trial means
            budget |= {"latency": True, "latency_size": latency_size}
        cfg = StudyConfig(
            storage=os.environ.get(STORAGE_ENV) or tune["storage"],
            study_name=f"{tune['study_name']}-{study_key(tune['space'], budget, data_id, seed)}",
            n_trials=tune["n_trials"],
            max_failed=tune["max_failed"],
            metric=tune["metric"],
            pruner=tune["pruner"],
            heartbeat_interval=tune["heartbeat_interval"],
            latency=bool(tune["latency"]),
        )
        return cls(cfg=cfg, tune=tune, seed=seed, shards=shards, data_id=data_id, base_model=base_model,
                   base_train=base_train, latency_size=latency_size, tracking_uri=params["mlflow"]["tracking_uri"],
                   experiment=params["mlflow"]["experiment"])

    def train_one(self, trial: optuna.Trial, values: dict, checkpoints: Path) -> float | tuple[float, float]:
        """Train one trial's network briefly; its val metric (and, with latency, its ms per image)."""
        metric = self.cfg.metric
        keras.utils.set_random_seed(self.seed + trial.number)
        model_cfg = apply_overrides("model", self.base_model, values)
        train_cfg = apply_overrides("train", self.base_train, values)
        network = build_network(model_cfg)
        pretrained = [w.copy() for w in network.get_weights()] if model_cfg.family == "u2netp" else None
        train_ds, val_ds = datasets(self.shards, train_cfg.size, train_cfg.batch_size, self.seed, train_cfg.draft_weight)
        rename = lambda logs: clean_logs(network, logs)  # noqa: E731
        callbacks = [EpochLogger(rename)]
        if not self.cfg.latency:  # Optuna's own callback reports the metric each epoch and stops a weak trial
            callbacks.append(KerasPruningCallback(trial, keras_log_name(network, metric)))
        fit(network, train_ds, val_ds, train_cfg, pos_weight=positive_weight(train_cfg, self.shards),
            steps_per_epoch=steps_per_epoch(train_cfg, self.shards), checkpoint_dir=checkpoints, callbacks=callbacks)
        if pretrained is not None:  # score what train would save: train.blend applies to trials too
            share, _ = choose_blend(network, pretrained, val_ds, train_cfg.blend)
            mlflow.log_metric("blend/share", share)
        quality = val_score(evaluate_val(network, val_ds), metric)
        if not self.cfg.latency:
            return quality
        ms = forward_ms(inference_model(network).predict_on_batch, self.latency_size)
        mlflow.log_metrics({"latency/ms_per_image": ms, "latency/size": self.latency_size})
        return quality, ms

    def parent_run_id(self, study: optuna.Study) -> str:
        """The study's MLflow parent run: created (with the study's settings) by the first process to ask,
        under the storage's lock, so workers starting together share one."""
        with study_lock(study):
            existing = study.user_attrs.get("mlflow_parent_run_id")
            if existing:
                return existing
            with tracking.run(f"tune-{self.cfg.study_name}") as parent:
                mlflow.log_params({"n_trials": self.cfg.n_trials, "metric": self.cfg.metric, "study": self.cfg.study_name,
                                   "storage": self.cfg.storage.split("@")[-1], "epochs_per_trial": self.tune["epochs"],
                                   "steps_per_epoch": self.tune["steps_per_epoch"], "pruner": json.dumps(self.cfg.pruner),
                                   "latency": self.cfg.latency, "max_metric_loss": self.tune["max_metric_loss"]})
                mlflow.log_dict(self.tune["space"], "search_space.json")
                mlflow.set_tags({"stage": "tune", "git.commit": tracking.git_commit(Path.cwd()), "data.sha256": self.data_id})
            study.set_user_attr("mlflow_parent_run_id", parent.info.run_id)
            return parent.info.run_id


def run_job(job: TuneJob, *, progress: bool = True) -> tuple[optuna.Study, str]:
    """Join the job's study (created if it is new; each choice of tune.try_each queued once) and run trials until
    it holds its budget, alongside any other workers, nested under the study's MLflow parent run; the study and
    that run's id. The tune stage and `bgremoval tune-worker` both run this."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(job.cfg, job.seed)
    queue_each_choice(study, job.tune["space"], list(job.tune["try_each"]), job.cfg.n_trials)
    log.info("study %s in %s: %d of %d trials done", job.cfg.study_name, job.cfg.storage.split("@")[-1],
             count(study, DONE), job.cfg.n_trials)
    tracking.configure(job.tracking_uri, job.experiment)
    parent = job.parent_run_id(study)  # a resumed or shared study logs into one parent
    with tracking.run(run_id=parent):
        optimise(study, job.cfg, job.tune["space"], job.train_one, progress=progress)
    return study, parent
