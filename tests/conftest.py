"""Fixtures shared across test modules; the helpers behind them live in tests/helpers.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import (copy_project, dvc, served_folder, start_browser, stock_onnx_export, train_toy_model,
                           write_pair)

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A valid folder: 6 groups x 4 frames of 32x24 pairs, distinct content."""
    folder = tmp_path / "data"
    for g in range(6):
        for f in range(4):
            write_pair(folder, f"seq{g}_{f:03d}", seed=g * 10 + f)
    return folder


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory) -> Path:
    """A tiny U-Net trained for a few seconds on bright discs, saved as the train stage saves it."""
    return train_toy_model(tmp_path_factory.mktemp("toy_model"))


@pytest.fixture(scope="session")
def toy_served(tmp_path_factory, toy_model) -> Path:
    """The toy U-Net as a served folder: Keras at 32, unrefined, params' serve: settings."""
    return served_folder(tmp_path_factory.mktemp("toy_served") / "served", toy_model)


@pytest.fixture(scope="session")
def onnx_served(tmp_path_factory) -> Path:
    """Stock U²-NetP as a served folder: onnxruntime at 64 (quick), unrefined, params' serve: settings."""
    tmp = tmp_path_factory.mktemp("onnx_served")
    return served_folder(tmp / "served", stock_onnx_export(tmp / "model.onnx"), runtime="onnxruntime", size=64)


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """An MLflow store (SQLite) for tests that log runs, each test in an experiment of its own: its tables are
    created once. Point MLflow at it with tests.helpers.tracking_store(uri), which points it back afterwards."""
    import mlflow

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    mlflow.MlflowClient(uri).search_experiments()  # creates the tables
    return uri


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the repo (code and config only) with toy settings, as its own git + DVC repo."""
    return copy_project(tmp_path / "project")


@pytest.fixture(scope="session")
def full_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One `dvc repro` of the whole toy pipeline, shared by the tests that inspect its results."""
    dst = copy_project(tmp_path_factory.mktemp("full") / "project")
    return dst, dvc(dst, "repro")


@pytest.fixture(scope="session")
def browser():
    browser = start_browser()
    try:
        yield browser
    finally:
        browser.driver.quit()
