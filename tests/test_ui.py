"""The user's view after the toy pipeline, in headless Chromium: the MLflow UI (the runs with their datasets,
the prediction grid, the registry and its model's test metrics), Optuna's dashboard on the study, the GX
Data Docs page and the report pictures. Screenshots go to test-artifacts/."""

from __future__ import annotations

import base64
import io
import json
import sys
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from tests.helpers import MLFLOW_SERVER_ENV, free_port, project_env, running_server

pytestmark = pytest.mark.slow
# MLflow 3's UI shows GenAI pages unless told the workflow is model training (its toggle, or this parameter).
TRAINING = "workflowType=machine_learning"


@pytest.fixture(scope="module")
def mlflow_ui(full_run, tmp_path_factory):
    """`mlflow ui` on the pipeline's own sqlite store, as a user starts it in the project."""
    project, run = full_run
    assert run.returncode == 0, run.stdout + run.stderr
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", "sqlite:///mlflow.db", "--port", str(port)]
    log = tmp_path_factory.mktemp("ui") / "mlflow-ui.log"
    with running_server(cmd, f"http://127.0.0.1:{port}/health", log, project_env(**MLFLOW_SERVER_ENV), cwd=project):
        yield f"http://127.0.0.1:{port}", project


def test_the_experiment_opens_on_its_runs_with_their_datasets(mlflow_ui, browser):
    from selenium.webdriver.common.by import By

    url, project = mlflow_ui
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bgremoval")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    n_trials = len(client.search_runs([experiment.experiment_id], "attributes.run_name LIKE 'trial-%'"))
    assert n_trials == 2

    # The experiment's own link opens on its runs (not the GenAI overview): the train run, its datasets, the study.
    page = browser.open(f"{url}/#/experiments/{experiment.experiment_id}?{TRAINING}", "tune-bgremoval-", "Dataset",
                        shot="mlflow-experiment")
    assert f"/experiments/{experiment.experiment_id}/runs" in browser.driver.current_url
    digest = {d.dataset.name: d.dataset.digest for d in client.get_run(_train_run(project)).inputs.dataset_inputs}
    assert f"train ({digest['train']})" in page
    assert browser.driver.find_elements(By.LINK_TEXT, "train")
    parent = browser.driver.find_element(By.PARTIAL_LINK_TEXT, "tune-bgremoval-")
    parent.find_element(By.XPATH, "./ancestor::div[contains(@class,'ag-cell-wrapper')][1]//button").click()
    browser.wait_for(*(f"trial-{i}" for i in range(n_trials)), shot="mlflow-experiment-trials")


def _train_run(project: Path) -> str:
    return json.loads((project / "reports" / "train.json").read_text())["run_id"]


# The bytes of an <img>'s source, as the page loaded it (base64), or 'error: ...'.
IMAGE_BYTES = ("const done = arguments[arguments.length - 1]; fetch(arguments[0].src).then(r => r.arrayBuffer())"
               ".then(b => { let s = ''; new Uint8Array(b).forEach(c => { s += String.fromCharCode(c); }); "
               "done(btoa(s)); }).catch(e => done('error: ' + e))")


def test_the_train_run_shows_its_prediction_grid(mlflow_ui, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    url, project = mlflow_ui
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bgremoval")
    grid = Image.open(project / "reports" / "train_predictions.png")
    page = browser.open(f"{url}/#/experiments/{experiment.experiment_id}/runs/{_train_run(project)}/artifacts/"
                        f"train_predictions.png?{TRAINING}", "train_predictions.png", shot="mlflow-run-prediction-grid")
    assert "train_predictions.png" in page
    # The artifact's preview: an image at the grid's size, loaded and laid out on the page.
    find = ("return Array.from(document.images).find(i => i.complete && i.naturalWidth === arguments[0] "
            "&& i.naturalHeight === arguments[1]) || null")
    try:
        shown = WebDriverWait(browser.driver, 60).until(lambda d: d.execute_script(find, *grid.size))
    finally:
        browser.screenshot("mlflow-run-prediction-grid")
    assert shown.is_displayed() and shown.size["width"] > 0 and shown.size["height"] > 0
    # ... and it is the grid the train stage drew, pixel for pixel.
    data = browser.driver.execute_async_script(IMAGE_BYTES, shown)
    assert not data.startswith("error"), data
    preview = Image.open(io.BytesIO(base64.b64decode(data)))
    assert np.array_equal(np.asarray(preview.convert("RGB")), np.asarray(grid.convert("RGB")))


def test_the_champion_version_leads_to_its_test_metrics_on_the_test_dataset(mlflow_ui, browser):
    from selenium.webdriver.common.by import By

    url, project = mlflow_ui
    registered = json.loads((project / "reports" / "registered.json").read_text())
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    page = browser.open(f"{url}/#/models?{TRAINING}", "bgremoval", "champion", shot="mlflow-models")
    assert f"Version {registered['version']}" in page
    browser.open(f"{url}/#/models/bgremoval/versions/{registered['version']}?{TRAINING}", "Source Model", "champion",
                 shot="mlflow-model-version")
    source = next(a for a in browser.driver.find_elements(By.TAG_NAME, "a") if "/models/m-" in (a.get_attribute("href") or ""))
    source.click()
    digest = _test_digest(project)
    page = browser.wait_for("Metrics", "test/max_f", f"test (#{digest})", shot="mlflow-model-metrics")
    assert f"{metrics['max_f']}"[:6] in page


def _test_digest(project: Path) -> str:
    """The test dataset's digest as the train run logged it."""
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    inputs = client.get_run(_train_run(project)).inputs.dataset_inputs
    return next(d.dataset.digest for d in inputs if d.dataset.name == "test")


def test_optuna_dashboard_shows_the_study_and_its_trials(full_run, browser, tmp_path):
    """`optuna-dashboard sqlite:///optuna.db`, as the README shows it, run in the project."""
    project, run = full_run
    assert run.returncode == 0, run.stdout + run.stderr
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "optuna-dashboard"), "sqlite:///optuna.db", "--port", str(port)]
    with running_server(cmd, f"http://127.0.0.1:{port}/api/studies", tmp_path / "dashboard.log", project_env(),
                        cwd=project):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=30) as resp:
            (study,) = json.loads(resp.read())["study_summaries"]
        best = json.loads((project / "data" / "tune" / "best_params.json").read_text())
        assert study["study_name"] == best["study"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}", timeout=30) as resp:
            trials = json.loads(resp.read())["trials"]
        assert len(trials) == 2 and best["trial"] in {t["number"] for t in trials}
        # The page shows the study, its history and the trial the tune stage chose as its best ...
        chosen = f"Best Trial (number={best['trial']})"
        page = browser.open(f"http://127.0.0.1:{port}/dashboard/studies/{study['study_id']}", best["study"],
                            "History", chosen, shot="optuna-dashboard")
        assert best["study"] in page and chosen in page
        # ... and its list: the count, then every trial of the study.
        names = [f"{len(trials)} Trials", *(f"Trial {t['number']}" for t in trials)]
        page = browser.open(f"http://127.0.0.1:{port}/dashboard/studies/{study['study_id']}/trials", *names,
                            shot="optuna-dashboard-trials")
        assert all(name in page for name in names), page[:2000]


def test_data_docs_and_report_pictures_open_readably(full_run, browser):
    project, run = full_run
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((project / "reports" / "validation.json").read_text())
    page = browser.open((project / report["data_docs"]).as_uri(), "Status: Succeeded", "Evaluated Expectations",
                        shot="data-docs")
    for column in ("image_error", "mask_error", "fg_fraction", "split"):
        assert column in page  # each expectation is listed by the column it guards
    # The pictures a person is pointed to: each loads in the browser at its full size, and is not blank.
    for name in ("eval_worst.png", "cutouts.png", "train_predictions.png", "augment_samples.png"):
        path = project / "reports" / name
        image = Image.open(path)
        assert image.size[0] >= 200 and len(set(image.convert("L").getdata())) > 16, name
        browser.open(path.as_uri(), shot=f"report-{path.stem}")
        assert image.size in browser.image_sizes(), name
