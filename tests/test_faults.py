"""Faults: `kill -9` in the middle of the tune stage and then of the train stage, then `dvc repro` again, in
a temporary copy of the project on toy settings. Nothing finished is lost or redone."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.helpers import dvc, project_env, set_params

pytestmark = pytest.mark.slow

DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)  # what counts towards tune.n_trials


def start_dvc(project: Path, *args: str, log: Path) -> subprocess.Popen:
    """`dvc ...` in its own process group, so SIGKILL reaches the stage it runs too."""
    env = project_env(TF_CPP_MIN_LOG_LEVEL="2")
    handle = open(log, "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "dvc", *args], cwd=project, env=env, stdout=handle,
                            stderr=subprocess.STDOUT, start_new_session=True)


def kill_when(proc: subprocess.Popen, ready, log: Path, timeout: float = 400) -> None:
    """SIGKILL the whole process group as soon as ready() holds."""
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"finished before it could be killed:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"not ready within {timeout:.0f} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _schema_ready(db: Path) -> bool:
    """The stage has finished creating Optuna's tables: read-only, so the check itself writes nothing."""
    if not db.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            return conn.execute("SELECT count(*) FROM alembic_version").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def trials(project: Path) -> list[optuna.trial.FrozenTrial]:
    storage = f"sqlite:///{project / 'optuna.db'}"
    if not _schema_ready(project / "optuna.db"):
        return []  # opening it now would make this poller create Optuna's tables alongside the stage
    try:
        summaries = optuna.get_all_study_summaries(storage)
        if not summaries:
            return []
        return optuna.load_study(study_name=summaries[0].study_name, storage=storage).get_trials(deepcopy=False)
    except Exception:  # noqa: BLE001 - the schema is still being created
        return []


def trial_states(project: Path) -> list[str]:
    """The states of the trials that are finished, or running with a heartbeat recorded, in one read-only query:
    cheap enough to poll a few times a second, so a window of a trial running after one finished is never missed.
    (A trial killed before its first heartbeat is never found stale by Optuna: the test kills after one.)"""
    if not _schema_ready(project / "optuna.db"):
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{project / 'optuna.db'}?mode=ro", uri=True)) as conn:
            return [state for (state,) in conn.execute(
                "SELECT state FROM trials WHERE state != 'RUNNING' OR trial_id IN (SELECT trial_id FROM trial_heartbeats)")]
    except sqlite3.Error:  # a table not there yet
        return []


def complete(project: Path) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials(project) if t.state == optuna.trial.TrialState.COMPLETE]


def test_kill_9_during_tune_and_during_train_then_repro_loses_nothing(project, tmp_path):
    """One project, two kills: SIGKILL while a tuning trial runs, then `dvc repro train` continues the study
    and is itself killed between two epoch checkpoints, then `dvc repro train` resumes training to its end."""
    import mlflow

    # Epochs long enough (12 steps) that the train kill lands between the second checkpoint and the end.
    set_params(project, {"tune.n_trials": 4, "tune.epochs": 2, "tune.steps_per_epoch": 4, "tune.heartbeat_interval": 1,
                         "train.epochs": 5, "train.steps_per_epoch": 12, "train.patience": 10, "train.freeze_epochs": 1})
    assert dvc(project, "repro", "augment").returncode == 0

    # 1. Killed while a trial runs, with at least one finished before it.
    log = tmp_path / "tune.log"
    proc = start_dvc(project, "repro", "tune", log=log)
    kill_when(proc, lambda: {"COMPLETE", "RUNNING"} <= set(trial_states(project)), log)
    before = {t.number: (t.params, t.values) for t in complete(project)}
    assert 1 <= len(before) < 4

    # 2. `dvc repro train` finishes the study first, then is killed mid-training.
    log = tmp_path / "train.log"
    proc = start_dvc(project, "repro", "train", log=log)

    def finished_epochs() -> int:
        metas = list((project / ".checkpoints").glob("*/full/training_metadata.json"))
        try:
            return max((json.loads(m.read_text())["epoch"] for m in metas), default=0)
        except (ValueError, KeyError):
            return 0

    kill_when(proc, lambda: finished_epochs() >= 2, log)
    at_kill = finished_epochs()
    assert 2 <= at_kill < 5

    # The study, as the interrupted repro left it: continued, not restarted.
    after = trials(project)
    done = {t.number: (t.params, t.values) for t in after if t.state in DONE}
    assert all(done[n] == before[n] for n in before)  # nothing finished was lost or changed
    assert len(done) == 4  # the budget (complete or pruned), not 4 more: finished trials were not re-run
    killed = [t for t in after if t.state == optuna.trial.TrialState.FAIL]
    assert len(killed) == 1  # the trial the kill cut off: failed by its stale heartbeat, then retried
    retry = [t for t in after if t.system_attrs.get("failed_trial") == killed[0].number]
    # The retry reuses what the killed trial had drawn (a kill can land between two suggestions).
    assert len(retry) == 1 and retry[0].number in done and killed[0].params.items() <= retry[0].params.items()
    assert not [t for t in after if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)]
    best = json.loads((project / "data" / "tune" / "best_params.json").read_text())
    assert best["trial"] in done

    # 3. `dvc repro train` again, as a user would: tune is not re-run, train resumes and finishes.
    again = dvc(project, "repro", "train")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resuming from the checkpoint after epoch {at_kill}" in again.stderr
    assert "Stage 'tune' didn't change, skipping" in again.stdout
    assert {t.number for t in trials(project) if t.state in DONE} == set(done)
    summary = json.loads((project / "reports" / "train.json").read_text())
    assert summary["epochs_run"] == 5 - at_kill  # only the epochs the killed run had not finished
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["train.resumed_at_epoch"] == str(at_kill)
    # One MLflow run holds the whole training: the killed part's epochs and the resumed ones.
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "val/iou")}
    assert steps == set(range(5))  # epochs 0..at_kill-1 logged before the kill, the rest after
    train_runs = client.search_runs([run.info.experiment_id], "attributes.run_name = 'train'")
    assert [r.info.run_id for r in train_runs] == [run.info.run_id]
    assert not list((project / ".checkpoints").glob("*/full"))  # finished: nothing left to resume
