"""Hyperparameter search: a search space declared in params.yaml, an Optuna study that resumes from its
storage, and every trial a nested MLflow run. One objective (a val metric, maximised), or two: the val
metric and the forward time per image, whose Pareto front is logged and from which params pick the
trade-off."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import keras
import optuna

from bgremoval.locks import engine_lock

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
    latency: bool  # second objective: ms per image, minimised

    @property
    def directions(self) -> list[str]:
        return ["maximize", "minimize"] if self.latency else ["maximize"]


SEARCHABLE = ("model.", "train.")


def _stored(choice: Any) -> Any:
    """A categorical choice as the study stores it: None, bools, numbers and strings as they are, anything else
    (a list, such as a U-Net's filters) as its JSON text, which every Optuna storage keeps and compares."""
    return choice if choice is None or isinstance(choice, (bool, int, float, str)) else json.dumps(choice)


def declared(space: dict[str, dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    """A trial's params with each categorical value back as the choice params.yaml declares (a list again)."""
    values = dict(params)
    for key, spec in space.items():
        if spec.get("type") == "categorical" and key in values:
            values[key] = next((c for c in spec["choices"] if _stored(c) == values[key]), values[key])
    return values


def suggest(trial: optuna.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Draw one value per dotted key of the declared space (float / int / categorical)."""
    values = {}
    for key, spec in space.items():
        if not key.startswith(SEARCHABLE):
            raise ValueError(f"tune.space.{key}: only model.* and train.* can be searched (export chooses the "
                             "serving set-up on val after training); "
                             "remove it from tune.space or set it in its own section")
        kind = spec["type"]
        if kind == "float":
            values[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)))
        elif kind == "int":
            values[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False)))
        elif kind == "categorical":
            drawn = trial.suggest_categorical(key, [_stored(c) for c in spec["choices"]])
            values[key] = declared({key: spec}, {key: drawn})[key]
        else:
            raise ValueError(f"tune.space.{key}: type must be float, int or categorical; got {kind!r}")
    return values


def apply_overrides(section: str, config, values: dict[str, Any]):
    """A copy of a frozen config with the `section.field` values that belong to it replaced."""
    return replace(config, **tuned_section(section, asdict(config), values))


def make_pruner(spec: dict[str, Any]) -> optuna.pruners.BasePruner:
    """A pruner from params' tune.pruner: median (n_startup_trials, n_warmup_steps), threshold (lower,
    n_warmup_steps), or none."""
    needs = {"median": ("n_startup_trials", "n_warmup_steps"), "threshold": ("lower", "n_warmup_steps"), "none": ()}
    kind = spec.get("type")
    if kind not in needs:
        raise ValueError(f"tune.pruner.type must be median, threshold or none; got {kind!r}")
    missing = [k for k in needs[kind] if k not in spec]
    if missing:
        raise ValueError(f"tune.pruner: a {kind} pruner needs {', '.join(needs[kind])}; missing {', '.join(missing)}")
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=int(spec["n_startup_trials"]),
                                           n_warmup_steps=int(spec["n_warmup_steps"]))
    if kind == "threshold":
        return optuna.pruners.ThresholdPruner(lower=float(spec["lower"]), n_warmup_steps=int(spec["n_warmup_steps"]))
    return optuna.pruners.NopPruner()


def study_key(space: dict, budget: dict, data_fingerprint: str, seed: int) -> str:
    """Short hash naming a study: the same search on the same data continues; a changed one starts afresh."""
    blob = json.dumps([space, budget, data_fingerprint, seed], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


class BudgetReached(Exception):
    """The study already holds n_trials complete, pruned, running or waiting trials."""


class BudgetedStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage that hands out a new trial only while the study holds fewer than n_trials
    complete, pruned, running or waiting ones, atomically across processes and machines (a PostgreSQL
    advisory lock; a file lock next to a SQLite file). N workers then stop at exactly n_trials, where
    checking a count after each trial would overshoot by up to N - 1."""

    def __init__(self, url: str, n_trials: int, **kwargs):
        import sqlalchemy

        engine = sqlalchemy.create_engine(url)
        try:  # workers starting together on a fresh database would race to create Optuna's tables
            for attempt in range(3):
                try:
                    with engine_lock(engine, _LOCK_KEY):
                        super().__init__(url, **kwargs)
                    break
                except sqlalchemy.exc.IntegrityError:
                    # Something outside the lock (optuna-dashboard, a script calling optuna.load_study)
                    # created the schema at the same moment: it exists now, so opening again finds it.
                    if attempt == 2:
                        raise
                    log.info("Optuna's tables in %s were being created elsewhere; opening again", url.split("@")[-1])
                    time.sleep(0.5)
        finally:
            engine.dispose()
        self.n_trials = n_trials

    def lock(self, study_id: int):
        """Held by one process at a time, per study."""
        return engine_lock(self.engine, _LOCK_KEY + 1 + study_id)

    def _create_new_trial(self, study_id: int, template_trial=None):
        # The one place every new trial comes from: Optuna's cache layer calls this private method,
        # not create_new_trial (which also ends here).
        if template_trial is not None:  # add_trial / enqueue_trial (e.g. a retry): not a fresh draw
            return super()._create_new_trial(study_id, template_trial)
        with self.lock(study_id):
            taken = self.get_all_trials(study_id, deepcopy=False, states=(*DONE, *_CLAIMED))
            if len(taken) >= self.n_trials:
                raise BudgetReached(f"study holds {len(taken)} of {self.n_trials} trials")
            return super()._create_new_trial(study_id, template_trial)


_LOCK_KEY = 0x6267_0000  # advisory-lock namespace ("bg"): + 0 the schema, + 1 + study id a study
_CLAIMED = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)


def study_lock(study: optuna.Study):
    """The storage's per-study lock (a context manager) for a study opened by open_study."""
    backend = getattr(study._storage, "_backend", study._storage)  # noqa: SLF001 (Optuna caches RDB storages)
    if not isinstance(backend, BudgetedStorage):
        raise TypeError(f"study {study.study_name} was not opened with open_study")
    return backend.lock(study._study_id)  # noqa: SLF001


def open_study(cfg: StudyConfig, seed: int) -> optuna.Study:
    """Create the study, or load it when it exists (resuming, or joining other workers): TPE seeded
    from params. With heartbeats, a trial whose worker went silent (killed) is failed after the grace
    period by the next worker to ask for a trial, and re-queued with the same params."""
    with warnings.catch_warnings():  # Optuna flags heartbeats experimental (since 2.9); noise in every stage log
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = BudgetedStorage(
            cfg.storage,
            cfg.n_trials,
            heartbeat_interval=cfg.heartbeat_interval,
            grace_period=2 * cfg.heartbeat_interval if cfg.heartbeat_interval else None,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2) if cfg.heartbeat_interval else None,
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


def queue_each_choice(study: optuna.Study, space: dict[str, dict[str, Any]], keys: list[str], n_trials: int) -> int:
    """A fresh study's first trials take each choice of the listed categorical keys in turn (the other
    keys are drawn as usual), so a small budget tries every serving size, say, instead of whatever
    the sampler happens to draw. Done once, under the study's lock: a resumed study or a second
    worker queues nothing. Returns how many trials were queued."""
    for key in keys:
        if space.get(key, {}).get("type") != "categorical":
            raise ValueError(f"tune.try_each: {key} is not a categorical key of tune.space; list only those")
    if not keys:
        return 0
    with study_lock(study):
        if study.get_trials(deepcopy=False):
            return 0
        n = min(max(len(space[key]["choices"]) for key in keys), n_trials)
        for i in range(n):
            study.enqueue_trial({key: _stored(space[key]["choices"][i % len(space[key]["choices"])]) for key in keys})
    log.info("study %s: the first %d trials try each choice of %s", study.study_name, n, ", ".join(keys))
    return n


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


class _TrialsBar:
    """A tqdm bar over the study's budget (n_trials), counting every worker's finished trials."""

    def __init__(self, study: optuna.Study, n_trials: int):
        from tqdm import tqdm

        self.bar = tqdm(total=n_trials, initial=count(study, DONE), desc="tune", unit="trial", leave=False)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.bar.n = count(study, DONE)
        failed = count(study, (optuna.trial.TrialState.FAIL,))
        self.bar.set_postfix({"last": trial.state.name.lower(), **({"failed": failed} if failed else {})}, refresh=True)


def optimise(
    study: optuna.Study, cfg: StudyConfig, space: dict, train_one: Callable[[optuna.Trial, dict, Path], Objective],
    progress: bool = True, poll_seconds: float = 5.0,
) -> None:
    """Run trials until the study holds n_trials complete or pruned ones (continuing an earlier run, or
    alongside other workers). When other workers hold the last trials, wait for them (with heartbeats, a
    killed worker's trial is failed and re-queued after the grace period) and take over what is left."""

    def objective(trial: optuna.Trial) -> Objective:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        return run_trial(trial, suggest(trial, space), train_one)

    def enough_failures(study: optuna.Study, _trial) -> None:
        if failures() >= cfg.max_failed:
            log.error("stopping the study: %d trials failed (tune.max_failed)", cfg.max_failed)
            study.stop()

    def failures() -> int:  # a killed worker's trial is re-queued, so it does not count as a failure
        return sum(1 for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
                   if not _retried(study, t))

    bar = _TrialsBar(study, cfg.n_trials) if progress else None
    for _ in range(cfg.n_trials + cfg.max_failed + 1):  # each round finishes or fails at least one trial
        remaining = cfg.n_trials - count(study, DONE)
        if remaining <= 0 or failures() >= cfg.max_failed:
            break
        try:
            study.optimize(
                objective,
                n_trials=remaining + cfg.max_failed,  # failures don't use up the budget; the storage ends it
                callbacks=[optuna.study.MaxTrialsCallback(cfg.n_trials, states=DONE), enough_failures,
                           *([bar] if bar else [])],
                catch=(Exception,),  # a failed trial is recorded with its error; the study goes on
                show_progress_bar=False,  # Optuna's counts this call's trials, not the study's budget: ours below
                gc_after_trial=True,
            )
        except BudgetReached:  # other workers hold the rest of the budget
            if not cfg.heartbeat_interval:
                log.warning("study %s: other workers hold the last trials; without tune.heartbeat_interval a killed "
                            "worker's trial cannot be told apart from a slow one, so this worker stops here", cfg.study_name)
                break
            running = (optuna.trial.TrialState.RUNNING,)
            log.info("study %s: waiting for other workers' %d running trials", cfg.study_name, count(study, running))
            # Until they finish, or a killed worker's trial is failed and re-queued (WAITING) for the next round.
            while count(study, running):
                time.sleep(poll_seconds)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
    if bar is not None:
        bar.bar.close()
    log.info("study %s: %d of %d trials finished", cfg.study_name, count(study, DONE), cfg.n_trials)


def _retried(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a failed trial was re-queued (RetryHeartbeatStaleTrialCallback records it in the copy)."""
    return any(trial.number in t.system_attrs.get("retry_history", ()) for t in study.get_trials(deepcopy=False))


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


def best_params(study: optuna.Study, space: dict[str, dict[str, Any]], max_metric_loss: float = 0.0) -> dict[str, Any]:
    """The chosen complete trial's values (categorical ones as the space declares them), number and metric (and,
    with two objectives, its latency and the front)."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise RuntimeError(f"study {study.study_name} has no complete trial; see its failed trials' errors in MLflow")
    as_declared = lambda t: declared(space, t.params)  # noqa: E731
    if len(study.directions) == 1:
        best = study.best_trial
        return {"params": as_declared(best), "value": best.value, "trial": best.number, "study": study.study_name}
    front = pareto_front(study)
    best = pick(front, max_metric_loss)
    return {
        "params": as_declared(best), "value": best.values[0], "latency_ms": best.values[1], "trial": best.number,
        "study": study.study_name, "max_metric_loss": max_metric_loss,
        "pareto_front": [{"trial": t.number, "value": t.values[0], "latency_ms": t.values[1], "params": as_declared(t)}
                         for t in front],
    }


def tuned_section(section: str, values: dict[str, Any], apply: dict[str, Any]) -> dict[str, Any]:
    """A params section (a mapping) with the tuned `section.key` values from tune's `apply` replaced."""
    fields = {k.split(".", 1)[1]: v for k, v in apply.items() if k.split(".", 1)[0] == section}
    unknown = set(fields) - set(values)
    if unknown:
        raise ValueError(f"{section}: no such setting(s) {sorted(unknown)}; check their spelling in tune.space and "
                         f"tune.apply against the {section}: section of params.yaml")
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
        # TypeError: Optuna's importance evaluators hash each distribution, and a choice stored as a list (in a
        # study whose trials were not drawn by suggest, which stores lists as their JSON text) is unhashable.
        except (ValueError, RuntimeError, TypeError) as exc:
            log.warning("no %s plot: %s", name, exc)
    return written


def log_study(study: optuna.Study, best: dict[str, Any], metric: str, plots_dir: Path) -> None:
    """Into the active (parent) run: the chosen trial, the trial counts, the Pareto front and the plots."""
    import mlflow
    import pandas as pd

    states = {s.name.lower(): count(study, (s,)) for s in optuna.trial.TrialState}
    mlflow.log_metrics({f"best/{metric}": best["value"], **{f"trials/{k}": v for k, v in states.items()}})
    mlflow.set_tag("best_trial", best["trial"])
    if "pareto_front" in best:
        mlflow.log_metric("best/ms_per_image", best["latency_ms"])
        mlflow.log_table(pd.DataFrame([{"trial": t["trial"], metric: t["value"], "ms_per_image": t["latency_ms"],
                                        **t["params"]} for t in best["pareto_front"]]), "pareto_front.json")
        for t in best["pareto_front"]:
            log.info("Pareto front: trial %d %s = %.4f at %.1f ms/image %s", t["trial"], metric, t["value"],
                     t["latency_ms"], t["params"])
    for plot in write_plots(study, plots_dir, metric):
        mlflow.log_artifact(str(plot))
