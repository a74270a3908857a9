"""Tuning: trials are nested MLflow runs, weak ones are pruned, an interrupted study continues."""

from __future__ import annotations

import time
from pathlib import Path

import keras
import mlflow
import optuna
import pytest

from bgremoval import tracking
from bgremoval.train import ModelConfig, TrainConfig, build_network, clean_logs, datasets, evaluate_val, fit
from bgremoval.tune import (
    DONE, PruneOnMetric, StudyConfig, apply_overrides, best_params, count, forward_ms, open_study, optimise, pareto_front,
    pick, queue_each_choice, suggest, tuned_section, write_plots,
)
from tests.test_train import _toy_shards

SPACE = {
    "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "train.loss": {"type": "categorical", "choices": ["bce_dice", "iou"]},
}
TRAIN = TrainConfig(size=32, batch_size=8, epochs=2, steps_per_epoch=2, learning_rate=1e-3, schedule="constant",
                    loss="bce_dice", freeze_epochs=0, patience=5, side_weight=1.0)


def _config(tmp_path: Path, name="toy", n_trials=3, pruner=None) -> StudyConfig:
    return StudyConfig(storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name=name, n_trials=n_trials, max_failed=3,
                       metric="val/iou", pruner=pruner or {"type": "none"}, heartbeat_interval=None)


def _objective(shards: Path, prune: bool = True):
    def train_one(trial, values, checkpoints):
        keras.utils.set_random_seed(trial.number)
        cfg = apply_overrides("train", TRAIN, values)
        network = build_network(ModelConfig(family="unet", unet_filters=[4, 8]))
        train_ds, val_ds = datasets(shards, 32, 8, 0)
        rename = lambda logs: clean_logs(network, logs)  # noqa: E731
        callbacks = [tracking.EpochLogger(rename)] + ([PruneOnMetric(trial, rename, "val/iou")] if prune else [])
        fit(network, train_ds, val_ds, cfg, 3.0, 2, checkpoints, callbacks)
        return evaluate_val(network, val_ds)["iou"]

    return train_one


@pytest.fixture
def shards(tmp_path):
    return _toy_shards(tmp_path / "shards", n_train=16, n_val=8)


def test_suggest_reads_the_declared_space():
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    values = suggest(study.ask(), {**SPACE, "train.freeze_epochs": {"type": "int", "low": 0, "high": 2}})
    assert 1e-4 <= values["train.learning_rate"] <= 1e-2 and values["train.loss"] in ("bce_dice", "iou")
    assert values["train.freeze_epochs"] in (0, 1, 2)
    with pytest.raises(ValueError, match="tune.space.x"):
        suggest(study.ask(), {"x": {"type": "uniform"}})
    with pytest.raises(ValueError, match="no such setting"):
        apply_overrides("train", TRAIN, {"train.learning_rte": 1.0})
    with pytest.raises(ValueError, match="tune.space.augment.size: only model"):
        suggest(study.ask(), {"augment.size": {"type": "int", "low": 1, "high": 2}})


def test_study_logs_nested_runs_and_prunes(tmp_path, shards):
    tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}", "tune-toy")
    # Val IoU can never reach 1.1: after its warm-up epoch every trial must be pruned.
    cfg = _config(tmp_path, n_trials=3, pruner={"type": "threshold", "lower": 1.1, "n_warmup_steps": 1})
    study = open_study(cfg, seed=0)
    with mlflow.start_run(run_name="tune") as parent:
        optimise(study, cfg, SPACE, _objective(shards), progress=False)
    assert count(study, (optuna.trial.TrialState.PRUNED,)) == 3
    children = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", output_format="list")
    assert len(children) == 3
    client = mlflow.MlflowClient()
    for run in children:
        assert run.data.tags["optuna.state"] == "pruned"
        assert {"train.learning_rate", "train.loss"} <= set(run.data.params)
        assert len(client.get_metric_history(run.info.run_id, "val/iou")) == 2  # per-epoch curve
    with pytest.raises(RuntimeError, match="no complete trial"):
        best_params(study)


def test_interrupted_study_continues_without_rerunning_finished_trials(tmp_path, shards):
    tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}", "tune-resume")
    cfg = _config(tmp_path, name="resume", n_trials=3)
    objective = _objective(shards)
    calls = []

    def killed_on_second(trial, values, ckpt):
        calls.append(trial.number)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")  # not caught: the process would die here
        return objective(trial, values, ckpt)

    with mlflow.start_run(), pytest.raises(KeyboardInterrupt):
        optimise(open_study(cfg, seed=0), cfg, SPACE, killed_on_second, progress=False)
    first = open_study(cfg, seed=0)
    finished = {t.number: t.params for t in first.get_trials(states=DONE)}
    assert list(finished) == [0]

    with mlflow.start_run():
        optimise(open_study(cfg, seed=0), cfg, SPACE, objective, progress=False)
    study = open_study(cfg, seed=0)
    assert count(study, DONE) == 3
    assert {t.number: t.params for t in study.get_trials(states=DONE)}[0] == finished[0]  # kept, not re-run
    assert calls == [0, 1]  # the second run did not call trial 0 again
    best = best_params(study)
    assert best["study"] == "resume" and 0 <= best["value"] <= 1


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path, shards):
    tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}", "tune-fail")
    cfg = _config(tmp_path, name="fail", n_trials=2)
    objective = _objective(shards)

    def sometimes_broken(trial, values, ckpt):
        if trial.number == 0:
            raise RuntimeError("out of memory (simulated)")
        return objective(trial, values, ckpt)

    with mlflow.start_run() as parent:
        optimise(open_study(cfg, seed=0), cfg, SPACE, sometimes_broken, progress=False)
    study = open_study(cfg, seed=0)
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert [t.number for t in failed] == [0] and count(study, DONE) == 2
    runs = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", output_format="list")
    broken = [r for r in runs if r.data.tags.get("optuna.state") == "failed"]
    assert len(broken) == 1 and "out of memory" in broken[0].data.tags["error"] and broken[0].info.status == "FAILED"


def _two_objective_study(points: list[tuple[float, float]]) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for i, (quality, ms) in enumerate(points):
        study.add_trial(optuna.trial.create_trial(params={"evaluate.size": 256 + i}, values=[quality, ms],
                        distributions={"evaluate.size": optuna.distributions.IntDistribution(0, 10_000)}))
    return study


def test_the_trade_off_is_the_fastest_front_trial_within_the_allowed_metric_loss():
    # (iou, ms): trial 3 is dominated by trial 1 (worse and slower), so it is not on the front.
    study = _two_objective_study([(0.90, 240.0), (0.895, 150.0), (0.85, 90.0), (0.88, 200.0)])
    front = pareto_front(study)
    assert [t.number for t in front] == [2, 1, 0]  # fastest first
    assert pick(front, 0.0).number == 0  # the best metric, whatever it costs
    assert pick(front, 0.01).number == 1  # 0.005 worse, 90 ms faster
    assert pick(front, 0.06).number == 2
    best = best_params(study, 0.01)
    assert best["trial"] == 1 and best["latency_ms"] == 150.0 and best["value"] == 0.895
    assert [t["trial"] for t in best["pareto_front"]] == [2, 1, 0]
    assert tuned_section("evaluate", {"size": 320, "worst": 8}, {"evaluate.size": 257, "train.loss": "bce"}) == {"size": 257, "worst": 8}
    with pytest.raises(ValueError, match="no such setting"):
        tuned_section("evaluate", {"size": 320}, {"evaluate.sise": 256})


def test_a_two_objective_study_measures_latency_and_logs_its_front(tmp_path, shards):
    """Quality and latency together: the serving size is searched, each trial measured at it."""
    tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}", "tune-pareto")
    cfg = StudyConfig(storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name="pareto", n_trials=3, max_failed=2,
                      metric="val/iou", pruner={"type": "median"}, heartbeat_interval=None, latency=True)
    space = {"evaluate.size": {"type": "categorical", "choices": [32, 256]}}
    train_one = _objective(shards, prune=False)  # Optuna cannot prune multi-objective trials

    def quality_and_latency(trial, values, ckpt):
        quality = train_one(trial, {}, ckpt)
        network = build_network(ModelConfig(family="unet", unet_filters=[4, 8]))
        return quality, forward_ms(network.predict_on_batch, values["evaluate.size"])

    study = open_study(cfg, seed=0)
    with mlflow.start_run() as parent:
        optimise(study, cfg, space, quality_and_latency, progress=False)
    assert count(open_study(cfg, seed=0), DONE) == 3 and len(study.directions) == 2
    times = {t.params["evaluate.size"]: t.values[1] for t in study.get_trials(states=DONE)}
    if len(times) == 2:  # a 64x larger input must take longer
        assert times[256] > times[32]
    runs = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", output_format="list")
    assert len(runs) == 3 and all(r.data.metrics["latency_ms"] > 0 for r in runs)
    written = {p.name for p in write_plots(study, tmp_path / "plots", "val/iou")}
    assert "pareto_front.html" in written
    best = best_params(study, 1.0)  # any loss allowed: the fastest front trial
    assert best["latency_ms"] == min(t["latency_ms"] for t in best["pareto_front"])


def test_a_worker_waits_for_a_silent_trial_and_runs_its_retry(tmp_path):
    """The budget is held by a trial whose worker went silent (killed): the next worker waits out the
    heartbeat grace period, the trial is failed and re-queued, and the worker runs it with its params."""
    tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}", "tune-stale")
    cfg = StudyConfig(storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name="stale", n_trials=1, max_failed=2,
                      metric="val/iou", pruner={"type": "none"}, heartbeat_interval=1)
    study = open_study(cfg, seed=0)
    silent = study.ask({"train.learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    study._storage.record_heartbeat(silent._trial_id)  # its worker beat once, then died
    seen = []

    def train_one(trial, values, ckpt):
        seen.append(values)
        return 0.5

    start = time.time()
    with mlflow.start_run():
        optimise(study, cfg, {"train.learning_rate": SPACE["train.learning_rate"]}, train_one, progress=False, poll_seconds=0.2)
    assert time.time() - start < 30
    assert study.trials[silent.number].state == optuna.trial.TrialState.FAIL
    assert count(study, DONE) == 1 and seen == [{"train.learning_rate": silent.params["train.learning_rate"]}]


def test_opening_a_study_survives_its_schema_being_created_outside_the_lock(tmp_path, monkeypatch):
    """CI saw it: a script polling the study with optuna.load_study (no lock) created Optuna's tables at
    the moment the tune stage did, and the stage died on `UNIQUE constraint failed: alembic_version`.
    Here the other process wins that race once; open_study then finds the tables and opens the study."""
    import sqlalchemy

    cfg = _config(tmp_path, name="raced")
    real_init, calls = optuna.storages.RDBStorage.__init__, []

    def raced_init(self, url, **kwargs):
        calls.append(url)
        if len(calls) == 1:
            real_init(optuna.storages.RDBStorage.__new__(optuna.storages.RDBStorage), url)  # the other process
            raise sqlalchemy.exc.IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed"))
        real_init(self, url, **kwargs)

    monkeypatch.setattr(optuna.storages.RDBStorage, "__init__", raced_init)
    study = open_study(cfg, seed=0)
    assert len(calls) == 2
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    monkeypatch.undo()
    assert len(optuna.load_study(study_name="raced", storage=cfg.storage).trials) == 1


def test_a_small_study_tries_each_listed_choice_once(tmp_path):
    """Three seeded trials over a 3-way choice: the sampler alone may repeat one (the DAVIS run drew 256²
    three times); with try_each every size is tried, and the other keys are still drawn."""
    tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}", "tune-each")
    space = {"train.learning_rate": SPACE["train.learning_rate"],
             "evaluate.size": {"type": "categorical", "choices": [256, 288, 320]}}
    cfg = _config(tmp_path, name="each", n_trials=3)
    study = open_study(cfg, seed=0)
    assert queue_each_choice(study, space, ["evaluate.size"], cfg.n_trials) == 3
    assert queue_each_choice(study, space, ["evaluate.size"], cfg.n_trials) == 0  # queued once per study
    seen = []

    def train_one(trial, values, ckpt):
        seen.append(values)
        return 0.5

    with mlflow.start_run():
        optimise(study, cfg, space, train_one, progress=False)
    assert sorted(v["evaluate.size"] for v in seen) == [256, 288, 320]
    assert len({v["train.learning_rate"] for v in seen}) == 3
    with pytest.raises(ValueError, match="tune.try_each: train.learning_rate"):
        queue_each_choice(open_study(_config(tmp_path, name="other"), seed=0), space, ["train.learning_rate"], 3)
