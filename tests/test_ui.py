"""The user's view after the toy pipeline, in headless Chromium: the MLflow UI (runs, the prediction
grid, the registry), the GX Data Docs page and the evaluate pictures. Screenshots go to test-artifacts/."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import mlflow
import pytest
from PIL import Image

from tests.conftest import free_port, running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow_ui(full_run, tmp_path_factory):
    """`mlflow ui` on the pipeline's own sqlite store, as a user starts it in the project."""
    project, run = full_run
    assert run.returncode == 0, run.stdout + run.stderr
    port = free_port()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", "sqlite:///mlflow.db", "--port", str(port)]
    log = tmp_path_factory.mktemp("ui") / "mlflow-ui.log"
    with running_server(cmd, f"http://127.0.0.1:{port}/health", log, env, cwd=project):
        yield f"http://127.0.0.1:{port}", project


def test_mlflow_ui_shows_the_runs_the_prediction_grid_and_the_champion(mlflow_ui, browser):
    from selenium.webdriver.common.by import By

    url, project = mlflow_ui
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bgremoval")
    train_run = json.loads((project / "reports" / "train.json").read_text())["run_id"]
    n_trials = len(client.search_runs([experiment.experiment_id], "attributes.run_name LIKE 'trial-%'"))
    assert n_trials == 2

    # The experiment page: the train run and the tune study's parent run; expanding it lists every trial.
    browser.open(f"{url}/#/experiments/{experiment.experiment_id}/runs", "tune-bgremoval-", shot="mlflow-experiment")
    assert browser.driver.find_elements(By.LINK_TEXT, "train")  # the train run's own link in the table
    parent = browser.driver.find_element(By.PARTIAL_LINK_TEXT, "tune-bgremoval-")
    parent.find_element(By.XPATH, "./ancestor::div[contains(@class,'ag-cell-wrapper')][1]//button").click()
    browser.wait_for(*(f"trial-{i}" for i in range(n_trials)), shot="mlflow-experiment-trials")
    assert {e.text for e in browser.driver.find_elements(By.PARTIAL_LINK_TEXT, "trial-")} == {f"trial-{i}" for i in range(n_trials)}

    # The train run's page shows the prediction grid image it logged, fully loaded.
    grid = Image.open(project / "reports" / "train_predictions.png").size
    browser.open(f"{url}/#/experiments/{experiment.experiment_id}/runs/{train_run}/artifacts/train_predictions.png",
                 "train_predictions.png", shot="mlflow-run-prediction-grid")
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser.driver, 60).until(lambda d: grid in browser.image_sizes())
    browser.screenshot("mlflow-run-prediction-grid")

    # The Models page: bgremoval with its champion alias.
    page = browser.open(f"{url}/#/models", "bgremoval", "champion", shot="mlflow-models")
    version = json.loads((project / "reports" / "registered.json").read_text())["version"]
    assert f"Version {version}" in page


def test_data_docs_and_evaluate_pictures_open_readably(full_run, browser):
    project, run = full_run
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((project / "reports" / "validation.json").read_text())
    page = browser.open((project / report["data_docs"]).as_uri(), "Status: Succeeded", "Evaluated Expectations",
                        shot="data-docs")
    for column in ("image_error", "mask_error", "fg_fraction", "split"):
        assert column in page  # each expectation is listed by the column it guards
    # The pictures a person is pointed to: each loads in the browser at its full size, and is not blank.
    for name in ("eval_worst.png", "train_predictions.png", "augment_samples.png"):
        path = project / "reports" / name
        image = Image.open(path)
        assert image.size[0] >= 200 and len(set(image.convert("L").getdata())) > 16, name
        browser.open(path.as_uri(), shot=f"report-{path.stem}")
        assert image.size in browser.image_sizes(), name
