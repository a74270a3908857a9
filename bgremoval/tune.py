"""Hyperparameter search: a search space declared in params.yaml, an Optuna study that resumes from its
storage, and every trial a nested MLflow run. One objective (a val metric, maximised), or two: the val
metric and the forward latency at the serving size, whose Pareto front is logged and from which params
pick the trade-off."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
import traceback
import warnings
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
    latency: bool = False  # second objective: ms per image at the serving size, minimised

    @property
    def directions(self) -> list[str]:
        return ["maximize", "minimize"] if self.latency else ["maximize"]


SEARCHABLE = ("model.", "train.", "evaluate.size")


def suggest(trial: optuna.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Draw one value per dotted key of the declared space (float / int / categorical)."""
    values = {}
    for key, spec in space.items():
        if not key.startswith(SEARCHABLE):
            raise ValueError(f"tune.space.{key}: only model.*, train.* and evaluate.size can be searched")
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
        # Optuna cannot prune multi-objective trials: they run their whole budget.
        pruner=optuna.pruners.NopPruner() if cfg.latency else make_pruner(cfg.pruner),
        directions=cfg.directions,
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


Objective = float | tuple[float, float]  # the metric, or (metric, ms per image)


def forward_ms(predict: Callable[[Any], Any], size: int, repeats: int = 5) -> float:
    """Median wall time of one forward pass on a size x size batch of one, after two warm-up calls."""
    import numpy as np

    batch = np.full((1, size, size, 3), 0.5, np.float32)
    for _ in range(2):
        predict(batch)  # traces and allocates
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict(batch)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def run_trial(trial: optuna.Trial, values: dict[str, Any], train_one: Callable[[optuna.Trial, dict, Path], Objective]) -> Objective:
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
        if isinstance(value, tuple):
            mlflow.log_metrics({"objective": value[0], "latency_ms": value[1]})
        else:
            mlflow.log_metric("objective", value)
        mlflow.set_tag("optuna.state", "complete")
        return value


def optimise(
    study: optuna.Study, cfg: StudyConfig, space: dict, train_one: Callable[[optuna.Trial, dict, Path], Objective], progress: bool = True
) -> None:
    """Run trials until the study holds n_trials complete or pruned ones (continuing an earlier run)."""
    remaining = cfg.n_trials - count(study, DONE)
    if remaining <= 0:
        log.info("study %s already has %d finished trials", cfg.study_name, count(study, DONE))
        return

    def objective(trial: optuna.Trial) -> Objective:
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


def pareto_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The complete trials no other trial beats on both objectives, fastest first."""
    return sorted(study.best_trials, key=lambda t: (t.values[1], -t.values[0], t.number))


def pick(front: list[optuna.trial.FrozenTrial], max_metric_loss: float) -> optuna.trial.FrozenTrial:
    """The trade-off: the fastest trial on the front whose metric is within max_metric_loss of the best."""
    if not front:
        raise ValueError("the Pareto front is empty")
    top = max(t.values[0] for t in front)
    good = [t for t in front if t.values[0] >= top - max_metric_loss - 1e-12]
    return min(good, key=lambda t: (t.values[1], -t.values[0], t.number))


def best_params(study: optuna.Study, max_metric_loss: float = 0.0) -> dict[str, Any]:
    """The chosen complete trial's values, number and metric (and, with two objectives, its latency and the front)."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise RuntimeError(f"study {study.study_name} has no complete trial; see its failed trials' errors in MLflow")
    if len(study.directions) == 1:
        best = study.best_trial
        return {"params": best.params, "value": best.value, "trial": best.number, "study": study.study_name}
    front = pareto_front(study)
    best = pick(front, max_metric_loss)
    return {
        "params": best.params, "value": best.values[0], "latency_ms": best.values[1], "trial": best.number,
        "study": study.study_name, "max_metric_loss": max_metric_loss,
        "pareto_front": [{"trial": t.number, "value": t.values[0], "latency_ms": t.values[1], "params": t.params} for t in front],
    }


def tuned_section(section: str, values: dict[str, Any], apply: dict[str, Any]) -> dict[str, Any]:
    """A params section (a mapping) with the tuned `section.key` values from tune's `apply` replaced."""
    fields = {k.split(".", 1)[1]: v for k, v in apply.items() if k.split(".", 1)[0] == section}
    unknown = set(fields) - set(values)
    if unknown:
        raise ValueError(f"{section}: no such setting(s) {sorted(unknown)}")
    return {**values, **fields}


def write_plots(study: optuna.Study, out_dir: Path, metric: str = "metric") -> list[Path]:
    """Optimisation history and parameter importances as HTML (importances need 2+ complete trials);
    with two objectives, of the metric, plus the Pareto front (metric against ms per image)."""
    from functools import partial

    from optuna.visualization import plot_optimization_history, plot_param_importances, plot_pareto_front

    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {"optimization_history": plot_optimization_history, "param_importances": plot_param_importances}
    if len(study.directions) > 1:
        plots = {
            "optimization_history": partial(plot_optimization_history, target=lambda t: t.values[0], target_name=metric),
            # The evaluator ranks what leads to *low* targets: negate the metric that is maximised.
            "param_importances": partial(plot_param_importances, target=lambda t: -t.values[0], target_name=metric),
        }
        plots["pareto_front"] = partial(plot_pareto_front, target_names=[metric, "ms per image"])
    written = []
    for name, plot in plots.items():
        try:
            path = out_dir / f"{name}.html"
            with warnings.catch_warnings():  # it warns on any custom target, negated or not
                warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
                figure = plot(study)
            figure.write_html(str(path), include_plotlyjs=True)  # self-contained: opens offline
            written.append(path)
        except (ValueError, RuntimeError) as exc:
            log.warning("no %s plot: %s", name, exc)
    return written
