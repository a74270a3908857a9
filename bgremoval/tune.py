"""Hyperparameter search: one objective, a search space declared in params.yaml, an Optuna study
that resumes from its storage, and every trial a nested MLflow run."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import keras
import optuna

log = logging.getLogger(__name__)

DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@dataclass(frozen=True)
class StudyConfig:
    """The study: where it lives, how many trials, how weak ones are stopped."""

    storage: str
    study_name: str
    n_trials: int  # complete + pruned trials the study must reach (failed ones don't count)
    max_failed: int  # stop after this many failures: a broken setup should not loop forever
    metric: str  # per-epoch metric reported to the pruner and maximised, e.g. val/iou
    pruner: dict[str, Any]
    heartbeat_interval: int | None  # seconds; a trial silent for 2x this is failed (killed worker)


def suggest(trial: optuna.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Draw one value per dotted key of the declared space (float / int / categorical)."""
    values = {}
    for key, spec in space.items():
        kind = spec["type"]
        if kind == "float":
            values[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)))
        elif kind == "int":
            values[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False)))
        elif kind == "categorical":
            values[key] = trial.suggest_categorical(key, list(spec["choices"]))
        else:
            raise ValueError(f"tune.space.{key}: type must be float, int or categorical; got {kind!r}")
    return values


def apply_overrides(section: str, config, values: dict[str, Any]):
    """A copy of a frozen config with the `section.field` values that belong to it replaced."""
    fields = {k.split(".", 1)[1]: v for k, v in values.items() if k.split(".", 1)[0] == section}
    unknown = set(fields) - set(config.__dataclass_fields__)
    if unknown:
        raise ValueError(f"{section}: no such setting(s) {sorted(unknown)}")
    return replace(config, **fields)


def make_pruner(spec: dict[str, Any]) -> optuna.pruners.BasePruner:
    """A pruner from params: median (n_startup_trials, n_warmup_steps), threshold (lower), or none."""
    kind = spec.get("type", "median")
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=int(spec.get("n_startup_trials", 2)), n_warmup_steps=int(spec.get("n_warmup_steps", 0)))
    if kind == "threshold":
        return optuna.pruners.ThresholdPruner(lower=float(spec["lower"]), n_warmup_steps=int(spec.get("n_warmup_steps", 0)))
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"tune.pruner.type must be median, threshold or none; got {kind!r}")


def study_key(space: dict, budget: dict, data_fingerprint: str, seed: int) -> str:
    """Short hash naming a study: the same search on the same data continues; a changed one starts afresh."""
    blob = json.dumps([space, budget, data_fingerprint, seed], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def open_study(cfg: StudyConfig, seed: int) -> optuna.Study:
    """Create the study, or load it when it exists (resuming): TPE seeded from params."""
    storage = optuna.storages.RDBStorage(
        cfg.storage,
        heartbeat_interval=cfg.heartbeat_interval,
        grace_period=2 * cfg.heartbeat_interval if cfg.heartbeat_interval else None,
    )
    return optuna.create_study(
        study_name=cfg.study_name,
        storage=storage,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=make_pruner(cfg.pruner),
        direction="maximize",
        load_if_exists=True,
    )


def count(study: optuna.Study, states) -> int:
    """Trials of the study in the given states."""
    return len(study.get_trials(deepcopy=False, states=states))


class PruneOnMetric(keras.callbacks.Callback):
    """Report the metric to Optuna after each epoch and stop the trial when the pruner says so."""

    def __init__(self, trial: optuna.Trial, rename: Callable[[dict], dict], metric: str):
        super().__init__()
        self.trial, self.rename, self.metric = trial, rename, metric

    def on_epoch_end(self, epoch, logs=None):
        value = self.rename(logs or {}).get(self.metric)
        if value is None:
            raise KeyError(f"tune.metric {self.metric!r} is not among the epoch's metrics {sorted(self.rename(logs or {}))}")
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.metric}={value:.4f} at epoch {epoch}")


def run_trial(trial: optuna.Trial, values: dict[str, Any], train_one: Callable[[optuna.Trial, dict, Path], float]) -> float:
    """One trial as a nested MLflow run: params, curves (via train_one's callbacks), result and state."""
    import mlflow

    with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True) as run:
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        mlflow.log_params(values)
        mlflow.set_tags({"optuna.trial": trial.number, "stage": "tune"})
        try:
            with tempfile.TemporaryDirectory(prefix="trial-") as tmp:
                value = train_one(trial, values, Path(tmp))
        except optuna.TrialPruned as exc:
            mlflow.set_tags({"optuna.state": "pruned", "optuna.pruned_at": str(exc)})
            raise
        except Exception as exc:
            mlflow.set_tags({"optuna.state": "failed", "error": f"{type(exc).__name__}: {exc}"[:5000]})
            mlflow.log_text(traceback.format_exc(), "error.txt")
            mlflow.end_run(status="FAILED")
            raise
        mlflow.log_metric("objective", value)
        mlflow.set_tag("optuna.state", "complete")
        return value


def optimise(
    study: optuna.Study, cfg: StudyConfig, space: dict, train_one: Callable[[optuna.Trial, dict, Path], float], progress: bool = True
) -> None:
    """Run trials until the study holds n_trials complete or pruned ones (continuing an earlier run)."""
    remaining = cfg.n_trials - count(study, DONE)
    if remaining <= 0:
        log.info("study %s already has %d finished trials", cfg.study_name, count(study, DONE))
        return

    def objective(trial: optuna.Trial) -> float:
        return run_trial(trial, suggest(trial, space), train_one)

    def enough_failures(study: optuna.Study, _trial) -> None:
        if count(study, (optuna.trial.TrialState.FAIL,)) >= cfg.max_failed:
            log.error("stopping the study: %d trials failed (tune.max_failed)", cfg.max_failed)
            study.stop()

    study.optimize(
        objective,
        n_trials=remaining + cfg.max_failed,  # failures don't use up the budget, MaxTrialsCallback ends it
        callbacks=[optuna.study.MaxTrialsCallback(cfg.n_trials, states=DONE), enough_failures],
        catch=(Exception,),  # a failed trial is recorded with its error; the study goes on
        show_progress_bar=progress,
        gc_after_trial=True,
    )


def best_params(study: optuna.Study) -> dict[str, Any]:
    """The best complete trial's values, number and metric."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise RuntimeError(f"study {study.study_name} has no complete trial; see its failed trials' errors in MLflow")
    best = study.best_trial
    return {"params": best.params, "value": best.value, "trial": best.number, "study": study.study_name}


def write_plots(study: optuna.Study, out_dir: Path) -> list[Path]:
    """Optimisation history and parameter importances as HTML (importances need 2+ complete trials)."""
    from optuna.visualization import plot_optimization_history, plot_param_importances

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, plot in (("optimization_history", plot_optimization_history), ("param_importances", plot_param_importances)):
        try:
            path = out_dir / f"{name}.html"
            plot(study).write_html(str(path), include_plotlyjs=True)  # self-contained: opens offline
            written.append(path)
        except (ValueError, RuntimeError) as exc:
            log.warning("no %s plot: %s", name, exc)
    return written
