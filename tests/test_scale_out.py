"""Scale-out against the machine's real PostgreSQL: three `bgremoval tune-worker` processes share one
Optuna study, one is killed with SIGKILL mid-trial, and every trial is tracked by a real `mlflow server`
whose backend store is PostgreSQL too. Skips (with the reason) only where no PostgreSQL answers."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from PIL import Image

from bgremoval.serving.render import png_bytes
from tests.helpers import MLFLOW_SERVER_ENV, ROOT, copy_project, disc_image, dvc, free_port, running_server, toy_shards
PG = os.environ.get("BGREMOVAL_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
N_TRIALS = 6
pytestmark = pytest.mark.slow


def _admin():
    import psycopg

    try:
        return psycopg.connect(f"{PG}/postgres", connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL reachable at {PG} ({exc}); set BGREMOVAL_TEST_PG to one")


def _temp_database(prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn = _admin()
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return name


def _drop(name: str) -> None:
    conn = _admin()
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def _env(**extra) -> dict:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                TF_CPP_MIN_LOG_LEVEL="2", **extra)


@contextlib.contextmanager
def shared_mlflow_server(artifacts: Path):
    """`mlflow server` with a PostgreSQL backend store and a local artifact root, on a free loopback port."""
    db = _temp_database("bgremoval_mlflow")
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"{PG}/{db}",
           "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    try:
        with running_server(cmd, f"http://127.0.0.1:{port}/health", artifacts.parent / "mlflow-server.log",
                            _env(**MLFLOW_SERVER_ENV)):
            yield f"http://127.0.0.1:{port}"
    finally:
        _drop(db)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    with shared_mlflow_server(tmp_path_factory.mktemp("server") / "artifacts") as url:
        yield url


@pytest.fixture(scope="module")
def workers_run(tmp_path_factory, mlflow_server):
    """Three workers on one study in PostgreSQL; the first is killed with SIGKILL inside its first trial."""
    db = _temp_database("bgremoval_optuna")
    storage = f"{PG}/{db}"
    workdir = tmp_path_factory.mktemp("workdir")
    shards = toy_shards(workdir / "shards", n_train=16, n_val=8)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["paths"]["augmented"] = str(shards)
    params["model"] |= {"family": "unet", "unet_filters": [4, 8]}
    params["tune"] |= {"n_trials": N_TRIALS, "epochs": 2, "steps_per_epoch": 3, "size": 32, "latency": False,
                       "heartbeat_interval": 1, "max_failed": 3, "pruner": {"type": "none"},
                       "space": {"train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = _env(MLFLOW_TRACKING_URI=mlflow_server, BGREMOVAL_TUNE_STORAGE=storage)
    cmd = [sys.executable, "-m", "bgremoval.cli", "tune-worker", "--quiet"]
    logs = [open(workdir / f"worker{i}.log", "w") for i in range(3)]
    procs = [subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT) for log in logs]
    victim = procs[0]

    def load():
        (name,) = optuna.study.get_all_study_names(storage)
        return optuna.load_study(study_name=name, storage=storage)

    killed_trial, deadline = None, time.time() + 240
    while killed_trial is None and time.time() < deadline:
        time.sleep(0.5)
        try:
            running = load().get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        except (ValueError, KeyError):  # not created yet
            continue
        # Inside the trial and its MLflow run (which the test below expects to find, left running).
        mine = [t for t in running if t.user_attrs.get("worker", "").endswith(f":{victim.pid}")
                and "mlflow_run_id" in t.user_attrs]
        if mine:  # inside the trial (its first heartbeat is written as it starts) and its MLflow run: kill now
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            killed_trial = mine[0].number
    assert killed_trial is not None, "the first worker never started a trial"
    codes = [p.wait(timeout=400) for p in procs[1:]]
    for log in logs:
        log.close()
    # Run once more after all is done: a late worker finds the budget spent and starts nothing.
    late = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    yield {"study": load(), "killed": killed_trial, "codes": codes, "late": late, "tracking": mlflow_server,
           "logs": [(workdir / f"worker{i}.log").read_text() for i in range(3)]}
    _drop(db)


def test_three_workers_reach_exactly_n_trials_without_duplicates(workers_run):
    study = workers_run["study"]
    assert workers_run["codes"] == [0, 0], workers_run["logs"]
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    assert len(done) == N_TRIALS, [(t.number, t.state.name) for t in study.trials]
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    assert len({t.user_attrs["worker"] for t in done}) >= 2  # the trials really were shared out
    late = workers_run["late"]
    assert late.returncode == 0 and f"{N_TRIALS} of {N_TRIALS} trials done" in late.stdout, late.stdout + late.stderr
    assert len(study.trials) == len(optuna.load_study(study_name=study.study_name, storage=study._storage).trials)


def test_a_killed_workers_trial_is_failed_and_retried_not_left_running(workers_run):
    study = workers_run["study"]
    assert not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING))
    killed = study.trials[workers_run["killed"]]
    assert killed.state == optuna.trial.TrialState.FAIL
    retries = [t for t in study.trials if killed.number in t.system_attrs.get("retry_history", [])]
    assert len(retries) == 1 and retries[0].state == optuna.trial.TrialState.COMPLETE
    assert retries[0].params == killed.params  # the same trial again, not a new draw


def test_the_shared_mlflow_server_holds_every_trials_nested_run(workers_run):
    study = workers_run["study"]
    client = mlflow.MlflowClient(tracking_uri=workers_run["tracking"])
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    parent = client.get_run(parent_id)
    assert parent.data.params["study"] == study.study_name
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    by_id = {r.info.run_id: r for r in children}
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == N_TRIALS
    for trial in done:
        run = by_id[trial.user_attrs["mlflow_run_id"]]  # every worker logged under the one parent
        assert run.data.tags["optuna.state"] == "complete" and run.data.metrics["objective"] == pytest.approx(trial.value)
    assert len(children) == N_TRIALS + 1  # and the killed trial's run, left as it was when the worker died


def test_queued_experiments_run_in_parallel_against_shared_engines(tmp_path):
    """`dvc exp run --queue` + `dvc queue start -j 2`: each experiment runs in its own workspace, so the
    tracking and the study go to shared engines (MLflow server, PostgreSQL), never to one SQLite file.
    The project is the toy pipeline with its data stages and the stock baseline run, committed: the queued
    experiments change a training knob, so tuning (the study) and everything after it run, in each
    experiment's workspace, and the data stages do not run again."""
    project = copy_project(tmp_path / "project")
    for stage in ("augment", "baseline"):
        ran = dvc(project, "repro", stage)
        assert ran.returncode == 0, ran.stdout + ran.stderr
    db = _temp_database("bgremoval_queue")
    try:
        with shared_mlflow_server(tmp_path / "artifacts") as mlflow_server:
            git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
            subprocess.run([*git, "add", "-A"], cwd=project, check=True)
            subprocess.run([*git, "commit", "-qm", "toy project and its data"], cwd=project, check=True)
            env = {"MLFLOW_TRACKING_URI": mlflow_server, "BGREMOVAL_TUNE_STORAGE": f"{PG}/{db}"}
            for weight in ("0.5", "1.5"):
                queued = dvc(project, "exp", "run", "--queue", "-n", f"side-{weight}", "-S", f"train.side_weight={weight}", env=env)
                assert queued.returncode == 0, queued.stdout + queued.stderr
            started = dvc(project, "queue", "start", "-j", "2", env=env)
            assert started.returncode == 0, started.stdout + started.stderr
            deadline = time.time() + 900
            while time.time() < deadline:
                for name in ("side-0.5", "side-1.5"):  # wait on each running task's log (no polling while it runs)
                    with contextlib.suppress(subprocess.TimeoutExpired):  # the status below says what hung
                        dvc(project, "queue", "logs", "--follow", name, env=env, timeout=max(1.0, deadline - time.time()))
                status = dvc(project, "queue", "status", env=env).stdout
                if "Queued" not in status and "Running" not in status:
                    break
                time.sleep(10)
            logs = {name: dvc(project, "queue", "logs", name, env=env).stdout for name in ("side-0.5", "side-1.5")}
            assert status.count("Success") == 2, f"{status}\n" + "\n".join(log[-3000:] for log in logs.values())
            for log in logs.values():  # tuning and training ran in the experiment; the data stages were reused
                assert "Running stage 'tune'" in log and "Running stage 'train'" in log, log[-3000:]
                assert "Running stage 'augment'" not in log and "Running stage 'baseline'" not in log, log[-3000:]
            shown = dvc(project, "exp", "show", "--csv", env=env).stdout
            assert "side-0.5" in shown and "side-1.5" in shown
            client = mlflow.MlflowClient(tracking_uri=mlflow_server)
            train_runs = client.search_runs([client.get_experiment_by_name("bgremoval").experiment_id],
                                            "tags.stage = 'train'")
            assert sorted(r.data.params["train.side_weight"] for r in train_runs) == ["0.5", "1.5"]
            versions = client.search_model_versions("name = 'bgremoval'")
            assert len(versions) == 2 and client.get_model_version_by_alias("bgremoval", "champion")
            studies = optuna.study.get_all_study_summaries(f"{PG}/{db}")
            assert studies and all(s.n_trials >= 2 for s in studies)
            # The champion serves from the shared registry, from a folder that is not the project.
            port, image = free_port(), disc_image(40, 56)[0]
            cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/bgremoval@champion", "--env-manager", "local",
                   "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
            elsewhere = tmp_path / "elsewhere"
            elsewhere.mkdir()
            with running_server(cmd, f"http://127.0.0.1:{port}/ping", elsewhere / "serve.log",
                                _env(MLFLOW_TRACKING_URI=mlflow_server), cwd=elsewhere):
                body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(png_bytes(Image.fromarray(image))).decode()]]},
                        "params": {"output": "mask"}}
                req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(),
                                             {"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=120) as resp:
                    row = json.loads(resp.read())["predictions"][0]
            mask = Image.open(io.BytesIO(base64.b64decode(row["png"])))
            assert mask.size == (56, 40)
    finally:
        _drop(db)


def test_concurrent_registrations_on_a_postgresql_registry(tmp_path, onnx_served):
    """Four processes register at once into a PostgreSQL-backed registry: the advisory lock decides them
    one at a time, so the best is champion and every alias agrees with its version's recorded decision."""
    from mlflow.tracking import MlflowClient

    from tests.test_register import assert_consistent_aliases, register_concurrently

    db = _temp_database("bgremoval_registry")
    try:
        uri = f"{PG}/{db}"
        scores = [0.85, 0.70, 0.90, 0.80]
        records = register_concurrently(uri, tmp_path, onnx_served, scores)
        mlflow.set_tracking_uri(uri)
        assert_consistent_aliases(MlflowClient(), records, scores)
    finally:
        mlflow.set_tracking_uri(None)
        _drop(db)
