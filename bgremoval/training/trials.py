"""Running the study's trials: each a nested MLflow run, timed where latency is the second objective, until the
study holds its budget of finished trials, alongside any other workers."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from bgremoval.training.search import suggest
from bgremoval.training.study import DONE, BudgetReached, StudyConfig, count

log = logging.getLogger(__name__)

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
