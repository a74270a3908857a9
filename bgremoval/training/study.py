"""The Optuna study tune runs: where it lives (any Optuna storage, SQLite by default, PostgreSQL for several
machines), the budget it holds its workers to, its pruner, and the locks that let workers start together."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any

import optuna

from bgremoval.locks import engine_lock
from bgremoval.training.search import stored

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
            study.enqueue_trial({key: stored(space[key]["choices"][i % len(space[key]["choices"])]) for key in keys})
    log.info("study %s: the first %d trials try each choice of %s", study.study_name, n, ", ".join(keys))
    return n


def count(study: optuna.Study, states) -> int:
    """Trials of the study in the given states."""
    return len(study.get_trials(deepcopy=False, states=states))
