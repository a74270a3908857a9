"""Fixtures shared across test modules; the helpers behind them live in tests/helpers.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import (copy_project, dvc, open_sqlite_store, served_folder, start_browser, stock_onnx_export,
                           train_toy_model, write_pair)

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

# Tests that share an expensive fixture run in one pytest-xdist worker (`make test` runs `-n 2 --dist
# loadgroup`), so it is built once: the toy pipeline's full run, and the scale-out module's MLflow server.
SHARED = {"full_run": "full_run", "mlflow_server": "scale_out"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups off the markers
def pytest_collection_modifyitems(config, items):
    for item in items:
        groups = {group for fixture, group in SHARED.items() if fixture in getattr(item, "fixturenames", ())}
        if len(groups) > 1:
            raise pytest.UsageError(f"{item.nodeid} uses fixtures of two xdist groups: {sorted(groups)}")
        if groups:
            item.add_marker(pytest.mark.xdist_group(groups.pop()))
    # Longest first, so that the workers finish together: the groups, then the other slow tests (servers,
    # pipelines), then the fast tier, which fills the gaps at the end.
    items.sort(key=lambda item: (not item.get_closest_marker("xdist_group"), not item.get_closest_marker("slow")))


def pytest_collection_finish(session):
    """In an xdist worker with --dist loadgroup, every grouped test's id must carry its group (`...@full_run`);
    where a pytest and pytest-xdist pair fails to tag them, the groups would be split and each worker
    would build the shared fixtures again, silently doubling the run's time."""
    if getattr(session.config.option, "loadgroup", False):
        untagged = [i.nodeid for i in session.items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
        if untagged:
            raise pytest.UsageError(f"pytest-xdist did not tag {len(untagged)} grouped tests (e.g. {untagged[0]}): "
                                    "this pytest and pytest-xdist do not work together; see pyproject.toml's pins")


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
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    open_sqlite_store(uri)  # creates the tables; the runs' artifacts go beside the database, not into the repo
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
