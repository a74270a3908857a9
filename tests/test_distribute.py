"""Training on several devices (training/distribute.py): the settings and their errors, a train set that every
iterator reads the same way, one device against two logical CPU devices, a cut-off run resumed under a strategy,
and two workers on 127.0.0.1 that train one model together and register one version."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest

from bgremoval.training.distribute import (DistributeConfig, cluster_config, is_chief_task, make_strategy, scaled,
                                           task_name)
from bgremoval.training.fit import datasets, val_batch
from tests.helpers import ROOT, dvc, free_port, project_env, set_params, toy_shards, train_config


def _cluster(index: int, kind: str = "worker", chief: bool = False) -> dict:
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"], **({"chief": ["127.0.0.1:3"]} if chief else {})}
    return {"cluster": cluster, "task": {"type": kind, "index": index}}


def test_the_chief_is_worker_0_or_the_task_named_chief():
    assert is_chief_task(None)  # one machine
    assert is_chief_task(_cluster(0)) and not is_chief_task(_cluster(1))
    assert is_chief_task(_cluster(0, "chief", chief=True)) and not is_chief_task(_cluster(0, chief=True))
    assert task_name(_cluster(1)) == "worker 1 of 2"


def test_a_strategy_that_is_not_there_or_a_cluster_without_tf_config_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="distribute.strategy must be one of none, mirrored, multi_worker; got 'horovod'"):
        DistributeConfig(strategy="horovod", cpu_replicas=2, scale_with_replicas=False)
    with pytest.raises(ValueError, match="distribute.cpu_replicas"):
        DistributeConfig(strategy="mirrored", cpu_replicas=0, scale_with_replicas=False)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match=r"multi_worker needs TF_CONFIG"):
        make_strategy(DistributeConfig(strategy="multi_worker", cpu_replicas=1, scale_with_replicas=False))
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match=r"TF_CONFIG must be JSON like"):
        cluster_config()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}))
    with pytest.raises(ValueError, match=r"task worker 3 is not in its cluster"):
        cluster_config()


def _devices(n: int):
    return SimpleNamespace(num_replicas_in_sync=n)  # what scaled() asks of a strategy


def test_the_global_batch_splits_over_the_replicas_or_grows_with_them():
    cfg = train_config(batch_size=8, learning_rate=0.001)
    assert scaled(cfg, _devices(1), True) is cfg
    assert scaled(cfg, _devices(2), False) == cfg  # 4 a replica, the same optimisation
    grown = scaled(cfg, _devices(4), True)
    assert (grown.batch_size, grown.learning_rate) == (32, pytest.approx(0.004))
    with pytest.raises(ValueError, match="train.batch_size 8 .* must split evenly over the 3 replicas"):
        scaled(cfg, _devices(3), False)


def test_no_val_batch_leaves_a_replica_empty():
    """TensorFlow's oneDNN convolution returns its input for an empty batch: a replica must never get one."""
    assert val_batch(25, 8, 1) == 8
    for n in range(2, 40):
        for replicas in (2, 3, 4):
            if n < replicas:
                continue
            batch = val_batch(n, 8 if replicas != 3 else 6, replicas)
            assert batch % replicas == 0 and (n % batch == 0 or n % batch >= replicas), (n, replicas, batch)
    assert val_batch(25, 8, 2) == 10  # 25 by 8 would end in a batch of one
    with pytest.raises(ValueError, match=r"the val split has 1 pair\(s\): fewer than the 2 replicas"):
        val_batch(1, 2, 2)


def test_every_iterator_of_the_train_set_reads_the_same_batches_and_skips_to_any(tmp_path):
    """What makes replicas, phases and resumed runs train on what one uninterrupted run would: Keras looks at a
    first batch under a strategy and starts a new iterator, and fit() skips to the batch a phase starts at."""
    shards = toy_shards(tmp_path / "shards", n_train=12, n_val=4)
    train, _ = datasets(shards, 32, 4, seed=5, draft_weight=0.0)
    first = [y.numpy() for _, y in train.take(7)]  # 7 batches of 4: two passes and more
    again = [y.numpy() for _, y in train.take(7)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert all(np.array_equal(a, b) for a, b in zip(first[4:], [y.numpy() for _, y in train.skip(4).take(3)]))
    # Each pass is a permutation of the 12 pairs (as a fresh shuffle per pass gives), and the next pass another one.
    per_pair = [m.tobytes() for batch in first[:6] for m in batch]
    assert len(set(per_pair[:12])) == len(set(per_pair[12:])) == 12 and sorted(per_pair[:12]) == sorted(per_pair[12:])
    assert per_pair[:12] != per_pair[12:]


@pytest.fixture(scope="module")
def device_runs(tmp_path_factory):
    """The toy U-Net trained as the train stage trains it, in one process whose CPU is split in two: on one device,
    and on both (mirrored) in a run cut off at the start of its third epoch and run again (tests/train_on_devices.py)."""
    tmp = tmp_path_factory.mktemp("devices")
    run = subprocess.run([sys.executable, "-m", "tests.train_on_devices", str(toy_shards(tmp / "shards")), str(tmp)],
                         cwd=ROOT, env=project_env(TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return {**json.loads(run.stdout.strip().splitlines()[-1]), "tmp": tmp}


def _curve(device_runs, name: str, metric: str) -> list[float]:
    client = mlflow.MlflowClient(f"sqlite:///{device_runs['tmp'] / name / 'mlflow.db'}")
    return [m.value for m in client.get_metric_history(device_runs[name]["run_id"], metric)]


@pytest.mark.slow
def test_two_logical_cpu_devices_train_as_one_device_does(device_runs):
    one, two = device_runs["one"], device_runs["two"]
    assert (one["replicas"], two["replicas"]) == (1, 2)
    assert abs(one["val"]["iou"] - two["val"]["iou"]) <= 0.005, (one["val"], two["val"])
    client = mlflow.MlflowClient(f"sqlite:///{device_runs['tmp'] / 'two' / 'mlflow.db'}")
    params = client.get_run(two["run_id"]).data.params
    assert (params["distribute.strategy"], params["distribute.replicas"], params["distribute.global_batch"]) == \
        ("mirrored", "2", "8")
    # The same optimisation: each epoch's training loss agrees to float rounding, not only the end; the third
    # epoch, after the cut, too (it trained on the batches an uninterrupted run would have).
    curves = [_curve(device_runs, name, "train/loss") for name in ("one", "two")]
    assert len(curves[0]) == len(curves[1]) == 3 and np.allclose(curves[0], curves[1], rtol=1e-3), curves


@pytest.mark.slow
def test_a_run_cut_off_under_a_strategy_resumes_in_its_mlflow_run_where_it_stopped(device_runs):
    cut, two = device_runs["cut"], device_runs["two"]
    assert cut == "interrupted at epoch 2"
    client = mlflow.MlflowClient(f"sqlite:///{device_runs['tmp'] / 'two' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("devices").experiment_id])
    assert run.info.run_id == two["run_id"] and run.info.status == "FINISHED"
    assert run.data.tags["train.resumed_at_epoch"] == "2" and two["epochs_run"] == 1
    assert len(_curve(device_runs, "two", "val/iou")) == 3
    assert not list((device_runs["tmp"] / "two" / "checkpoints").glob("*"))  # finished: nothing left to resume


@pytest.mark.slow
def test_two_workers_on_loopback_train_one_model_and_register_one_version(full_run, tmp_path):
    """distribute.strategy multi_worker: `dvc repro` on the chief (worker 0 of TF_CONFIG) and `bgremoval
    train-worker` on worker 1, both on 127.0.0.1 in one copy of the project: one MLflow training run, one new
    registered version, and the worker leaves nothing behind."""
    source, run = full_run
    assert run.returncode == 0, run.stdout + run.stderr
    project = tmp_path / "project"
    shutil.copytree(source, project, symlinks=True)
    set_params(project, {"distribute.strategy": "multi_worker"})  # train.run_eagerly stays true: a cluster ignores it
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    before = {mv.version for mv in client.search_model_versions("name = 'bgremoval'")}
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}

    def tf_config(index: int) -> str:
        return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})

    log = tmp_path / "worker.log"  # a file, not a pipe: a worker blocked on a full pipe would stall the chief
    with open(log, "w") as sink:
        worker = subprocess.Popen([str(Path(sys.executable).parent / "bgremoval"), "train-worker"], cwd=project,
                                  env=project_env(TF_CONFIG=tf_config(1), TF_CPP_MIN_LOG_LEVEL="2"), stdout=sink,
                                  stderr=subprocess.STDOUT)
        try:
            chief = dvc(project, "repro", env={"TF_CONFIG": tf_config(0)}, timeout=400)
            worker.wait(timeout=120)
        finally:
            worker.kill()
    assert chief.returncode == 0, chief.stdout[-3000:] + chief.stderr[-3000:] + log.read_text()[-3000:]
    assert worker.returncode == 0, log.read_text()[-3000:]
    assert "worker 1 of 2: trained 2 epoch(s) with the chief" in log.read_text()
    assert "Stage 'tune' didn't change, skipping" in chief.stdout  # distribute: is the train stage's alone

    summary = json.loads((project / "reports" / "train.json").read_text())
    assert summary["replicas"] == 2
    trained = client.search_runs([client.get_run(summary["run_id"]).info.experiment_id],
                                 "tags.stage = 'train'")
    assert len(trained) == 2  # the first run's and this one: the worker logged none
    assert client.get_run(summary["run_id"]).data.params["distribute.replicas"] == "2"
    after = {mv.version for mv in client.search_model_versions("name = 'bgremoval'")}
    (new,) = after - before
    assert client.get_model_version("bgremoval", new).run_id == summary["run_id"]
    assert not list((project / ".checkpoints").glob("*")), list((project / ".checkpoints").glob("*"))
