"""The MLflow side of a run: the data splits logged as datasets, and the race two runs can have doing it."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from bgremoval import tracking
from tests.helpers import manifest_for, tracking_store


def test_each_split_is_an_input_dataset_with_its_context(data_dir, mlflow_uri):
    manifest = manifest_for(data_dir)
    with tracking_store(mlflow_uri) as uri:
        tracking.configure(uri, "inputs")
        with mlflow.start_run() as run:
            tracking.log_split_inputs(manifest, str(data_dir / "manifest.parquet"))
        inputs = mlflow.MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs
    contexts = {i.dataset.name: {t.value for t in i.tags if t.key == "mlflow.data.context"} for i in inputs}
    assert contexts == {"train": {"training"}, "val": {"validation"}, "test": {"testing"}}
    digests = {i.dataset.name: i.dataset.digest for i in inputs}
    assert digests["test"] == tracking.split_dataset(manifest, "test", "elsewhere").digest  # content, not the path
    assert len(set(digests.values())) == 3


def test_a_dataset_another_run_was_logging_at_the_same_moment_is_logged_on_a_second_try(data_dir, mlflow_uri,
                                                                                      monkeypatch):
    manifest = manifest_for(data_dir)
    real, calls = mlflow.log_input, []

    def racing(dataset, context=None, **kwargs):
        calls.append(dataset.name)
        if calls.count(dataset.name) == 1 and dataset.name == "val":  # the other run wins the insert once
            raise MlflowException('BAD_REQUEST: duplicate key value violates unique constraint "dataset_pk"')
        return real(dataset, context=context, **kwargs)

    monkeypatch.setattr(mlflow, "log_input", racing)
    with tracking_store(mlflow_uri) as uri:
        tracking.configure(uri, "race")
        with mlflow.start_run() as run:
            tracking.log_split_inputs(manifest, str(data_dir / "manifest.parquet"))
        names = sorted(i.dataset.name for i in mlflow.MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs)
    assert names == ["test", "train", "val"] and calls == ["train", "val", "val", "test"]


def test_other_logging_errors_are_not_retried(data_dir, mlflow_uri, monkeypatch):
    calls = []

    def broken(dataset, context=None, **kwargs):
        calls.append(dataset.name)
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: run not found")

    monkeypatch.setattr(mlflow, "log_input", broken)
    with pytest.raises(MlflowException, match="run not found"):
        tracking.log_split_inputs(manifest_for(data_dir), str(data_dir / "manifest.parquet"))
    assert calls == ["train"]


def test_a_later_stage_reopens_a_run_of_another_experiment(mlflow_uri):
    """Trained under `mlflow run` (its experiment), then registered by a plain `dvc exp run` (the default one)."""
    with tracking_store(mlflow_uri) as uri:
        tracking.configure(uri, "from-mlflow-run")
        with tracking.run("train") as trained:
            pass
        tracking.configure(uri, "reopened-elsewhere")
        with tracking.run(run_id=trained.info.run_id):
            mlflow.log_metric("test/max_f", 0.9)
        with tracking.run("later") as later:  # a new run after it goes where configure() said
            pass
        client = mlflow.MlflowClient()
        reopened = client.get_run(trained.info.run_id)
        elsewhere = client.get_experiment_by_name("reopened-elsewhere").experiment_id
        assert client.get_run(later.info.run_id).info.experiment_id == elsewhere
    assert reopened.data.metrics["test/max_f"] == 0.9 and reopened.info.status == "FINISHED"
    assert reopened.info.experiment_id != elsewhere


def test_a_run_is_reopened_in_a_store_other_than_the_one_configured(mlflow_uri, tmp_path):
    """configure() chose an experiment in one store; MLflow now points at another (a library caller's own):
    reopening a run there must not send later runs to an experiment id of the first store."""
    with tracking_store(mlflow_uri) as uri:
        tracking.configure(uri, "configured-first")
    with tracking_store(f"sqlite:///{tmp_path / 'other.db'}"):
        mlflow.set_experiment("a-callers-own")
        with mlflow.start_run() as made:
            pass
        with tracking.run(run_id=made.info.run_id):
            mlflow.log_metric("test/max_f", 0.8)
        with mlflow.start_run() as later:  # the caller's next run stays in the caller's experiment
            pass
        assert mlflow.MlflowClient().get_run(made.info.run_id).data.metrics["test/max_f"] == 0.8
        assert later.info.experiment_id == made.info.experiment_id
