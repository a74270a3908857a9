"""Tuning: trials are nested MLflow runs, weak ones are pruned, an interrupted study continues, a killed
worker's trial is retried, and a two-objective study trades val quality against the network's latency."""

from __future__ import annotations

import copy
import json
import time
import warnings
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import keras
import mlflow
import optuna
from optuna_integration import KerasPruningCallback
import pytest

from bgremoval import tracking
from bgremoval.model.network import build_network, inference_model
from bgremoval.training import trials, tune_job
from bgremoval.training.callbacks import EpochLogger
from bgremoval.settings import apply_overrides, tuned_section
from bgremoval.training.choice import best_params, log_study, pareto_front, pick, write_plots
from bgremoval.training.fit import clean_logs, datasets, evaluate_val, fit, keras_log_name, val_score
from bgremoval.training.search import declared, suggest
from bgremoval.training.study import DONE, BudgetReached, StudyConfig, count, make_pruner, open_study, queue_each_choice
from bgremoval.training.trials import optimise
from bgremoval.training.tune_job import STORAGE_ENV, TuneJob
from tests.helpers import PARAMS, model_config, skip_without_u2netp_weights, toy_shards, tracking_store, train_config

SPACE = {
    "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "train.loss": {"type": "categorical", "choices": ["bce_dice", "iou"]},
}
TRAIN = train_config(size=32, batch_size=8, epochs=2, steps_per_epoch=2, learning_rate=1e-3, schedule="constant",
                     loss="bce_dice", freeze_epochs=0, patience=5, side_weight=1.0, pos_weight=3.0, blend=[1.0])
SMALL, LARGE = [4, 8], [32, 64, 128]  # U-Net sizes a two-objective study chooses between


def _config(tmp_path: Path, name="toy", n_trials=3, pruner=None, heartbeat_interval=None) -> StudyConfig:
    return StudyConfig(storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name=name, n_trials=n_trials, max_failed=3,
                       metric="val/iou", pruner=pruner or {"type": "none"}, heartbeat_interval=heartbeat_interval,
                       latency=False)


def _objective(shards: Path, prune: bool = True):
    """A trial that really trains a tiny U-Net, with the callbacks the tune job uses."""
    def train_one(trial, values, checkpoints):
        keras.utils.set_random_seed(trial.number)
        cfg = apply_overrides("train", TRAIN, values)
        network = build_network(model_config(family="unet", unet_filters=SMALL))
        train_ds, val_ds = datasets(shards, 32, 8, 0, 0.0)
        rename = lambda logs: clean_logs(network, logs)  # noqa: E731
        callbacks = [EpochLogger(rename)] + ([KerasPruningCallback(trial, keras_log_name(network, "val/iou"))] if prune else [])
        fit(network, train_ds, val_ds, cfg, pos_weight=3.0, steps_per_epoch=2, checkpoint_dir=checkpoints,
            callbacks=callbacks)
        return evaluate_val(network, val_ds)["iou"]

    return train_one


def _scripted(epochs: int = 2, prune: bool = True):
    """A trial whose "training" hands its callbacks the epoch logs Keras would: val IoU 10 x the learning rate."""
    def train_one(trial, values, checkpoints):
        iou = 10 * values["train.learning_rate"]
        rename = lambda logs: {"val/iou": logs["val_iou"], "train/loss": logs["loss"]}  # noqa: E731
        callbacks = [EpochLogger(rename)] + ([KerasPruningCallback(trial, "val_iou")] if prune else [])
        for epoch in range(epochs):
            for callback in callbacks:
                callback.on_epoch_end(epoch, {"val_iou": iou, "loss": 1 - iou})
        return iou

    return train_one


def _children(parent_id: str) -> list:
    return mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", output_format="list")


@pytest.fixture(scope="module")
def mlflow_db(mlflow_uri):
    """MLflow pointed at the shared test store for this module's tests (each uses its own experiment), and
    pointed back afterwards."""
    with tracking_store(mlflow_uri) as uri:
        yield uri


@pytest.fixture
def quick_trials(monkeypatch):
    """Optuna collects garbage after every trial (gc_after_trial): with TensorFlow loaded that takes about half a
    second, and the scripted trials here leave nothing to collect."""
    import optuna.study._optimize as optimize_module

    monkeypatch.setattr(optimize_module, "gc", SimpleNamespace(collect=lambda: 0))


@pytest.fixture
def shards(tmp_path):
    return toy_shards(tmp_path / "shards", n_train=16, n_val=8)


def test_suggest_reads_the_declared_space():
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    values = suggest(study.ask(), {**SPACE, "train.freeze_epochs": {"type": "int", "low": 0, "high": 2}})
    assert 1e-4 <= values["train.learning_rate"] <= 1e-2 and values["train.loss"] in ("bce_dice", "iou")
    assert values["train.freeze_epochs"] in (0, 1, 2)
    with pytest.raises(ValueError, match="tune.space.train.x: type must be"):
        suggest(study.ask(), {"train.x": {"type": "uniform"}})
    # List choices (a U-Net's filters) come back as lists, with no warning from Optuna about their type.
    filters = {"model.unet_filters": {"type": "categorical", "choices": [[8, 16], [16, 32, 64]]}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        drawn = [suggest(study.ask(), filters)["model.unet_filters"] for _ in range(6)]
    assert all(d in ([8, 16], [16, 32, 64]) for d in drawn)
    with pytest.raises(ValueError, match="no such setting"):
        apply_overrides("train", TRAIN, {"train.learning_rte": 1.0})
    # Only what training decides is searched: the serving set-up is chosen by export, on val.
    for key in ("augment.size", "evaluate.size", "export.sizes"):
        with pytest.raises(ValueError, match=f"tune.space.{key}: only model"):
            suggest(study.ask(), {key: {"type": "int", "low": 1, "high": 2}})


def test_overrides_reach_the_model_and_train_configs_and_nothing_else():
    values = {"model.unet_filters": [8, 16], "train.batch_size": 4, "tune.size": 64}
    model = apply_overrides("model", model_config(family="unet", unet_filters=SMALL), values)
    assert model.unet_filters == [8, 16] and model.family == "unet"
    assert apply_overrides("train", TRAIN, values) == replace(TRAIN, batch_size=4)
    assert apply_overrides("train", TRAIN, {}) == TRAIN


@pytest.mark.parametrize("spec,kind", [({"type": "median", "n_startup_trials": 2, "n_warmup_steps": 0}, "MedianPruner"),
                                       ({"type": "threshold", "lower": 0.1, "n_warmup_steps": 1}, "ThresholdPruner"),
                                       ({"type": "none"}, "NopPruner")])
def test_make_pruner_builds_each_kind(spec, kind):
    assert type(make_pruner(spec)).__name__ == kind


def test_make_pruner_needs_every_setting_of_its_kind():
    with pytest.raises(ValueError, match="median pruner needs n_startup_trials, n_warmup_steps; missing n_warmup_steps"):
        make_pruner({"type": "median", "n_startup_trials": 2})
    with pytest.raises(ValueError, match="missing lower"):
        make_pruner({"type": "threshold", "n_warmup_steps": 1})
    with pytest.raises(ValueError, match="tune.pruner.type must be"):
        make_pruner({"type": "hyperband"})


@pytest.mark.usefixtures("quick_trials")
def test_study_logs_nested_runs_and_prunes(tmp_path, mlflow_db):
    tracking.configure(mlflow_db, "tune-prune")
    # Val IoU can never reach 1.1: after its warm-up epoch every trial must be pruned.
    cfg = _config(tmp_path, n_trials=2, pruner={"type": "threshold", "lower": 1.1, "n_warmup_steps": 1})
    study = open_study(cfg, seed=0)
    with mlflow.start_run(run_name="tune") as parent:
        optimise(study, cfg, SPACE, _scripted(epochs=3), progress=False)
    assert count(study, (optuna.trial.TrialState.PRUNED,)) == 2
    children = _children(parent.info.run_id)
    assert len(children) == 2
    client = mlflow.MlflowClient()
    for run in children:
        assert run.data.tags["optuna.state"] == "pruned" and "at epoch 1" in run.data.tags["optuna.pruned_at"]
        assert {"train.learning_rate", "train.loss"} <= set(run.data.params)
        assert len(client.get_metric_history(run.info.run_id, "val/iou")) == 2  # pruned after its second epoch
    with pytest.raises(RuntimeError, match="no complete trial"):
        best_params(study, SPACE)


def test_a_missing_metric_fails_the_trial_with_the_names_there_are():
    network = build_network(model_config(family="unet", unet_filters=SMALL))
    assert keras_log_name(network, "val/iou") == "val_iou"  # the key Optuna's pruning callback reads each epoch
    for wrong in ("iou", "val/iuo"):  # refused before a trial trains
        with pytest.raises(ValueError, match=rf"tune.metric must be one of \['val/iou', 'val/mae', 'val/dice'\]; got '{wrong}'"):
            keras_log_name(network, wrong)
    assert val_score({"iou": 0.5, "mae": 0.1}, "val/iou") == 0.5
    with pytest.raises(KeyError, match=r"tune.metric 'val/dice' is not among the val metrics \['val/iou', 'val/mae'\]"):
        val_score({"iou": 0.5, "mae": 0.1}, "val/dice")


@pytest.mark.slow
def test_trials_that_really_train_log_their_curves_and_are_pruned(tmp_path, shards, mlflow_db):
    tracking.configure(mlflow_db, "tune-prune-trained")
    cfg = _config(tmp_path, n_trials=3, pruner={"type": "threshold", "lower": 1.1, "n_warmup_steps": 1})
    study = open_study(cfg, seed=0)
    with mlflow.start_run(run_name="tune") as parent:
        optimise(study, cfg, SPACE, _objective(shards), progress=False)
    assert count(study, (optuna.trial.TrialState.PRUNED,)) == 3
    children = _children(parent.info.run_id)
    assert len(children) == 3
    client = mlflow.MlflowClient()
    for run in children:
        assert run.data.tags["optuna.state"] == "pruned"
        assert {"train.learning_rate", "train.loss"} <= set(run.data.params)
        assert len(client.get_metric_history(run.info.run_id, "val/iou")) == 2  # per-epoch curve


@pytest.mark.usefixtures("quick_trials")
def test_interrupted_study_continues_without_rerunning_finished_trials(tmp_path, mlflow_db):
    tracking.configure(mlflow_db, "tune-resume")
    cfg = _config(tmp_path, name="resume", n_trials=3)
    objective = _scripted()
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

    def counted(trial, values, ckpt):
        calls.append(trial.number)
        return objective(trial, values, ckpt)

    with mlflow.start_run():
        optimise(open_study(cfg, seed=0), cfg, SPACE, counted, progress=False)
    study = open_study(cfg, seed=0)
    assert count(study, DONE) == 3
    assert {t.number: t.params for t in study.get_trials(states=DONE)}[0] == finished[0]  # kept, not re-run
    assert 0 not in calls[2:]  # the second run did not call trial 0 again
    best = best_params(study, SPACE)
    top = max(study.get_trials(states=DONE), key=lambda t: t.value)
    assert best["study"] == "resume" and best["trial"] == top.number and best["value"] == top.value
    assert best["params"] == top.params


@pytest.mark.usefixtures("quick_trials")
def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path, mlflow_db):
    tracking.configure(mlflow_db, "tune-fail")
    cfg = _config(tmp_path, name="fail", n_trials=2)
    objective = _scripted()

    def sometimes_broken(trial, values, ckpt):
        if trial.number == 0:
            raise RuntimeError("out of memory (simulated)")
        return objective(trial, values, ckpt)

    with mlflow.start_run() as parent:
        optimise(open_study(cfg, seed=0), cfg, SPACE, sometimes_broken, progress=False)
    study = open_study(cfg, seed=0)
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert [t.number for t in failed] == [0] and count(study, DONE) == 2
    runs = _children(parent.info.run_id)
    broken = [r for r in runs if r.data.tags.get("optuna.state") == "failed"]
    assert len(broken) == 1 and "out of memory" in broken[0].data.tags["error"] and broken[0].info.status == "FAILED"


@pytest.mark.usefixtures("quick_trials")
def test_a_broken_setup_stops_after_max_failed_trials(tmp_path, mlflow_db):
    tracking.configure(mlflow_db, "tune-broken")
    cfg = replace(_config(tmp_path, name="broken", n_trials=5), max_failed=2)
    calls = []

    def always_broken(trial, values, ckpt):
        calls.append(trial.number)
        raise RuntimeError("no such file (simulated)")

    with mlflow.start_run():
        optimise(open_study(cfg, seed=0), cfg, SPACE, always_broken, progress=False)
    study = open_study(cfg, seed=0)
    assert calls == [0, 1] and count(study, (optuna.trial.TrialState.FAIL,)) == 2 and count(study, DONE) == 0


def test_a_study_opened_by_several_workers_hands_out_no_more_than_its_budget(tmp_path):
    """The storage refuses a fresh trial once the study holds n_trials done, running or waiting ones."""
    cfg = _config(tmp_path, name="budget", n_trials=2)
    one, other = open_study(cfg, seed=0), open_study(cfg, seed=0)  # two workers on one storage
    running = [one.ask(), other.ask()]
    with pytest.raises(BudgetReached, match="2 of 2"):
        other.ask()
    one.tell(running[0], 0.5)
    with pytest.raises(BudgetReached):
        one.ask()
    assert len(open_study(cfg, seed=0).trials) == 2


def _two_objective_study(points: list[tuple[float, float]]) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for i, (quality, ms) in enumerate(points):
        study.add_trial(optuna.trial.create_trial(params={"train.batch_size": 2 + i}, values=[quality, ms],
                        distributions={"train.batch_size": optuna.distributions.IntDistribution(1, 64)}))
    return study


def test_the_trade_off_is_the_fastest_front_trial_within_the_allowed_metric_loss():
    # (iou, ms): trial 3 is dominated by trial 1 (worse and slower), so it is not on the front.
    study = _two_objective_study([(0.90, 240.0), (0.895, 150.0), (0.85, 90.0), (0.88, 200.0)])
    front = pareto_front(study)
    assert [t.number for t in front] == [2, 1, 0]  # fastest first
    assert pick(front, 0.0).number == 0  # the best metric, whatever it costs
    assert pick(front, 0.01).number == 1  # 0.005 worse, 90 ms faster
    assert pick(front, 0.06).number == 2
    with pytest.raises(ValueError, match="empty"):
        pick([], 0.0)
    best = best_params(study, {}, 0.01)
    assert best["trial"] == 1 and best["latency_ms"] == 150.0 and best["value"] == 0.895
    assert best["params"] == {"train.batch_size": 3}
    assert [t["trial"] for t in best["pareto_front"]] == [2, 1, 0]
    assert tuned_section("train", {"batch_size": 8, "epochs": 2}, {"train.batch_size": 4, "model.family": "unet"}) == {
        "batch_size": 4, "epochs": 2}
    with pytest.raises(ValueError, match="no such setting"):
        tuned_section("train", {"batch_size": 8}, {"train.bach_size": 4})


def test_log_study_records_the_chosen_trial_the_counts_the_front_and_the_plots(tmp_path, mlflow_db):
    study = _two_objective_study([(0.90, 240.0), (0.895, 150.0), (0.85, 90.0), (0.88, 200.0)])
    best = best_params(study, {}, 0.01)
    tracking.configure(mlflow_db, "tune-log")
    with mlflow.start_run() as run:
        log_study(study, best, "val/iou", tmp_path / "plots")
    logged = mlflow.get_run(run.info.run_id).data
    assert logged.metrics["best/val/iou"] == 0.895 and logged.metrics["best/ms_per_image"] == 150.0
    assert logged.metrics["trials/complete"] == 4 and logged.metrics["trials/pruned"] == 0
    assert logged.tags["best_trial"] == "1"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"pareto_front.json", "pareto_front.html", "optimization_history.html"} <= artifacts
    table = mlflow.load_table("pareto_front.json", run_ids=[run.info.run_id])
    assert list(table["trial"]) == [2, 1, 0] and list(table["ms_per_image"]) == [90.0, 150.0, 240.0]
    assert list(table["train.batch_size"]) == [4, 3, 2]


def test_a_network_size_choice_does_not_stop_the_plots(tmp_path, caplog):
    """A list-valued choice (a U-Net's filters) cannot be ranked by Optuna's importance evaluators: that plot
    is left out with a warning, and the others are written."""
    filters = optuna.distributions.CategoricalDistribution([SMALL, LARGE])
    study = optuna.create_study(directions=["maximize", "minimize"])
    for i, (quality, ms) in enumerate([(0.8, 3.0), (0.9, 17.0), (0.7, 2.5), (0.85, 15.0)]):
        study.add_trial(optuna.trial.create_trial(params={"model.unet_filters": [SMALL, LARGE][i % 2]},
                                                  values=[quality, ms], distributions={"model.unet_filters": filters}))
    with caplog.at_level("WARNING", logger="bgremoval.training.choice"):
        written = {p.name for p in write_plots(study, tmp_path, "val/iou")}
    assert written == {"optimization_history.html", "pareto_front.html"}
    assert "no param_importances plot" in caplog.text


@pytest.mark.usefixtures("quick_trials")
def test_a_worker_waits_for_a_silent_trial_and_runs_its_retry(tmp_path, mlflow_db, monkeypatch):
    """The budget is held by a trial whose worker went silent (killed): the next worker waits out the
    heartbeat grace period, the trial is failed and re-queued, and the worker runs it with its params."""
    tracking.configure(mlflow_db, "tune-stale")
    cfg = _config(tmp_path, name="stale", n_trials=1, heartbeat_interval=1)
    study = open_study(cfg, seed=0)
    silent = study.ask({"train.learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    study._storage.record_heartbeat(silent._trial_id)  # its worker beat once, then died
    seen, polls = [], []
    real_sleep = time.sleep

    def sleep(seconds):  # a worker that never stops waiting fails here instead of hanging the test run
        polls.append(seconds)
        if len(polls) > 200:
            raise AssertionError("the worker is still waiting after 200 polls: the silent trial was never failed")
        real_sleep(seconds)

    monkeypatch.setattr(trials.time, "sleep", sleep)

    def train_one(trial, values, ckpt):
        seen.append(values)
        return 0.5

    with mlflow.start_run():
        optimise(study, cfg, {"train.learning_rate": SPACE["train.learning_rate"]}, train_one, progress=False,
                 poll_seconds=0.2)
    assert polls, "the worker ran a fresh trial instead of waiting: the budget was not held"
    assert study.trials[silent.number].state == optuna.trial.TrialState.FAIL
    assert count(study, DONE) == 1 and seen == [{"train.learning_rate": silent.params["train.learning_rate"]}]


@pytest.mark.usefixtures("quick_trials")
def test_without_heartbeats_a_worker_leaves_the_last_trials_to_the_others(tmp_path, mlflow_db):
    tracking.configure(mlflow_db, "tune-no-heartbeat")
    cfg = _config(tmp_path, name="others", n_trials=1)
    study = open_study(cfg, seed=0)
    study.ask()  # another worker's running trial holds the budget
    calls = []
    with mlflow.start_run():
        optimise(study, cfg, SPACE, lambda *args: calls.append(args) or 0.5, progress=False, poll_seconds=0.01)
    assert calls == [] and count(study, (optuna.trial.TrialState.RUNNING,)) == 1


def test_opening_a_study_survives_its_schema_being_created_outside_the_lock(tmp_path, monkeypatch):
    """A script polling the study with optuna.load_study (no lock) may create Optuna's tables at the moment
    the tune stage does (`UNIQUE constraint failed: alembic_version`). Here the other process wins that
    race once; open_study then finds the tables and opens the study."""
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


@pytest.mark.usefixtures("quick_trials")
def test_a_small_study_tries_each_listed_choice_once(tmp_path, mlflow_db):
    """Three seeded trials over a 3-way choice: the sampler alone may repeat a choice; with try_each every
    choice is tried once, and the other keys are still drawn."""
    tracking.configure(mlflow_db, "tune-each")
    space = {"train.learning_rate": SPACE["train.learning_rate"],
             "train.batch_size": {"type": "categorical", "choices": [2, 4, 8]}}
    cfg = _config(tmp_path, name="each", n_trials=3)
    study = open_study(cfg, seed=0)
    assert queue_each_choice(study, space, ["train.batch_size"], cfg.n_trials) == 3
    assert queue_each_choice(study, space, ["train.batch_size"], cfg.n_trials) == 0  # queued once per study
    seen = []

    def train_one(trial, values, ckpt):
        seen.append(values)
        return 0.5

    with mlflow.start_run():
        optimise(study, cfg, space, train_one, progress=False)
    assert sorted(v["train.batch_size"] for v in seen) == [2, 4, 8]
    assert len({v["train.learning_rate"] for v in seen}) == 3
    with pytest.raises(ValueError, match="tune.try_each: train.learning_rate"):
        queue_each_choice(open_study(_config(tmp_path, name="other"), seed=0), space, ["train.learning_rate"], 3)


# --- the tune job: what the tune stage and every tune-worker build from params -------------------------

def _job_params(tmp_path: Path, shards: Path, **tune_settings) -> dict:
    """params.yaml with toy settings for a tune job on the toy shards."""
    params = copy.deepcopy(PARAMS)
    params["base"]["seed"] = 0
    params["paths"]["augmented"] = str(shards)
    params["model"] |= {"family": "unet", "unet_filters": SMALL}
    params["train"] |= {"batch_size": 8, "schedule": "constant", "freeze_epochs": 0, "pos_weight": "auto"}
    params["export"]["sizes"] = [32, 48]
    params["tune"] |= {"n_trials": 2, "epochs": 1, "steps_per_epoch": 2, "size": 32, "latency": False,
                       "storage": f"sqlite:///{tmp_path / 'optuna.db'}", "heartbeat_interval": None,
                       "pruner": {"type": "none"}, "space": SPACE, "try_each": [], **tune_settings}
    return params


def test_a_tune_job_names_its_study_after_the_search_the_budget_and_the_data(tmp_path, shards, monkeypatch):
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    params = _job_params(tmp_path, shards)
    job = TuneJob.from_params(params)
    # Trials train on the tune budget: its epochs, steps and size replace train's; the rest is train's.
    assert (job.base_train.epochs, job.base_train.steps_per_epoch, job.base_train.size) == (1, 2, 32)
    assert job.base_train.learning_rate == PARAMS["train"]["learning_rate"] and job.base_model.unet_filters == SMALL
    assert job.latency_size == 48 and job.cfg.directions == ["maximize"] and job.seed == 0
    assert job.cfg.storage == params["tune"]["storage"] and job.cfg.study_name.startswith("bgremoval-")

    def name(p: dict) -> str:
        return TuneJob.from_params(p).cfg.study_name

    assert name(copy.deepcopy(params)) == job.cfg.study_name  # the same search joins the same study
    # Without the latency objective, the size it would be timed at does not matter.
    assert name(params | {"export": {**params["export"], "sizes": [32, 96]}}) == job.cfg.study_name
    other_data = toy_shards(tmp_path / "other", n_train=8, n_val=8)
    changed = {
        name(_job_params(tmp_path, shards, space={"train.loss": SPACE["train.loss"]})),
        name(_job_params(tmp_path, shards, epochs=2)),
        name(_job_params(tmp_path, other_data)),
        name(params | {"base": {"seed": 1}}),
        name(_job_params(tmp_path, shards, latency=True)),
        name(_job_params(tmp_path, shards, latency=True) | {"export": {**params["export"], "sizes": [32, 96]}}),
    }
    assert len(changed) == 6 and job.cfg.study_name not in changed
    latency = TuneJob.from_params(_job_params(tmp_path, shards, latency=True))
    assert latency.cfg.directions == ["maximize", "minimize"]

    monkeypatch.setenv(STORAGE_ENV, f"sqlite:///{tmp_path / 'shared.db'}")  # wins over tune.storage
    assert TuneJob.from_params(params).cfg.storage == f"sqlite:///{tmp_path / 'shared.db'}"
    with pytest.raises(FileNotFoundError, match="dvc repro augment"):
        TuneJob.from_params(_job_params(tmp_path, tmp_path / "nowhere"))


def test_every_worker_of_a_study_logs_under_one_parent_run(tmp_path, shards, mlflow_db):
    tracking.configure(mlflow_db, "tune-parent")
    job = TuneJob.from_params(_job_params(tmp_path, shards))
    first = job.parent_run_id(open_study(job.cfg, seed=0))
    second = TuneJob.from_params(_job_params(tmp_path, shards)).parent_run_id(open_study(job.cfg, seed=0))
    assert first == second
    parent = mlflow.get_run(first)
    assert parent.info.run_name == f"tune-{job.cfg.study_name}" and parent.data.tags["stage"] == "tune"
    assert parent.data.params["n_trials"] == "2" and parent.data.params["study"] == job.cfg.study_name
    assert parent.data.tags["data.sha256"] == job.data_id
    assert mlflow.artifacts.load_dict(f"runs:/{first}/search_space.json") == SPACE
    assert len(mlflow.search_runs(filter_string="tags.stage = 'tune'", output_format="list")) == 1


@pytest.mark.slow
def test_a_two_objective_study_times_each_trials_network_and_logs_its_front(tmp_path, shards, mlflow_db, monkeypatch):
    """Quality and latency together: the U-Net's size is searched, each trial's network timed at the largest
    serving size; the Pareto front is logged and the trade-off picked from it."""
    space = {"model.unet_filters": {"type": "categorical", "choices": [SMALL, LARGE]},
             "train.learning_rate": SPACE["train.learning_rate"]}
    params = _job_params(tmp_path, shards, n_trials=3, latency=True, space=space, try_each=["model.unet_filters"],
                         pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0})
    job = TuneJob.from_params(params)
    timed = []

    def forward_ms(predict, size, repeats=5):
        ms = trials.forward_ms(predict, size, repeats)
        timed.append((predict.__self__.count_params(), size, ms))
        return ms

    monkeypatch.setattr(tune_job, "forward_ms", forward_ms)
    study = open_study(job.cfg, seed=0)
    assert queue_each_choice(study, space, ["model.unet_filters"], job.cfg.n_trials) == 2
    tracking.configure(mlflow_db, "tune-pareto")
    with tracking.run(run_id=job.parent_run_id(study)) as parent:
        optimise(study, job.cfg, space, job.train_one, progress=False)
        best = best_params(study, space, 1.0)  # any loss allowed: the fastest front trial
        log_study(study, best, job.cfg.metric, tmp_path / "plots")
    done = study.get_trials(states=DONE)
    assert len(done) == 3 and len(study.directions) == 2
    # The study stores each network size as its JSON text; best_params gives them back as params.yaml has them.
    assert [t.params["model.unet_filters"] for t in done[:2]] == [json.dumps(SMALL), json.dumps(LARGE)]
    assert [declared(space, t.params)["model.unet_filters"] for t in done[:2]] == [SMALL, LARGE]  # each size tried
    assert best["params"]["model.unet_filters"] in (SMALL, LARGE)
    assert all(t["params"]["model.unet_filters"] in (SMALL, LARGE) for t in best["pareto_front"])

    # Each trial's own network was timed, at the largest of export.sizes, and that time is its second objective.
    n_params = {len(f): inference_model(build_network(model_config(family="unet", unet_filters=f))).count_params()
                for f in (SMALL, LARGE)}
    assert [(p, s) for p, s, _ in timed] == [(n_params[len(declared(space, t.params)["model.unet_filters"])], 48)
                                             for t in done]
    assert [t.values[1] for t in done] == [ms for _, _, ms in timed]
    assert timed[1][2] > timed[0][2]  # about 100 x the multiply-adds

    runs = {int(r.data.tags["optuna.trial"]): r for r in _children(parent.info.run_id)}
    assert sorted(runs) == [0, 1, 2]
    for t in done:
        metrics = runs[t.number].data.metrics
        assert metrics["latency_ms"] == pytest.approx(t.values[1]) and metrics["latency/size"] == 48
        assert metrics["objective"] == pytest.approx(t.values[0])
        assert len(mlflow.MlflowClient().get_metric_history(runs[t.number].info.run_id, "val/iou")) == 1
    assert best["latency_ms"] == min(t["latency_ms"] for t in best["pareto_front"])
    # Stored as text, the network size can be ranked too: all three plots.
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"optimization_history.html", "param_importances.html",
                                                                "pareto_front.html"}
    assert {"pareto_front.json", "pareto_front.html"} <= {
        a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id)}
    assert mlflow.get_run(parent.info.run_id).data.metrics["best/ms_per_image"] == best["latency_ms"]


@pytest.mark.slow
def test_a_u2netp_trial_scores_the_blend_train_would_save(tmp_path, shards, mlflow_db, monkeypatch):
    """train.blend applies to trials too: a trial's score is that of the blended weights train would save."""
    skip_without_u2netp_weights()
    params = _job_params(tmp_path, shards, n_trials=1, space={"train.learning_rate": SPACE["train.learning_rate"]},
                         steps_per_epoch=1)
    params["model"]["family"] = "u2netp"
    # Eagerly: tracing U²-NetP's graph for its one step costs most of a minute and is not what is tested here
    # (tests/test_train.py trains it in graph mode).
    params["train"] |= {"batch_size": 4, "blend": [0.0, 1.0], "run_eagerly": True}
    job = TuneJob.from_params(params)
    real_choose_blend, chosen = tune_job.choose_blend, []

    def choose_blend(network, pretrained, val_ds, shares):
        share, scores = real_choose_blend(network, pretrained, val_ds, shares)
        chosen.append((tuple(shares), share, scores[share]["iou"]))
        return share, scores

    monkeypatch.setattr(tune_job, "choose_blend", choose_blend)
    study = open_study(job.cfg, seed=0)
    tracking.configure(mlflow_db, "tune-u2netp")
    with tracking.run(run_id=job.parent_run_id(study)) as parent:
        optimise(study, job.cfg, params["tune"]["space"], job.train_one, progress=False)
    [trial] = study.get_trials(states=DONE)
    [(shares, share, iou)] = chosen
    assert shares == (0.0, 1.0) and trial.value == pytest.approx(iou, abs=1e-6)
    [run] = _children(parent.info.run_id)
    assert run.data.metrics["blend/share"] == share
