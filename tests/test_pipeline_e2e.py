"""End to end, as a user runs it: `dvc repro`, `dvc exp run`, `mlflow run .` and `bgremoval predict` in
temporary copies of the project on toy settings, on good and on bad data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from PIL import Image

from bgremoval.registry.versions import model_id_of
from tests.helpers import dvc, project_env, set_params, write_pair

pytestmark = pytest.mark.slow
HEADLINE = {"mae", "max_f", "iou", "boundary_f"}
DIS = {"s_measure", "weighted_f", "mean_e", "hce"}  # the dichotomous-segmentation measures


def test_repro_through_augment_on_the_sample(full_run, tmp_path):
    source, run = full_run
    assert run.returncode == 0, run.stdout + run.stderr
    project = tmp_path / "project"  # a copy: the re-runs below must not touch what other tests inspect
    shutil.copytree(source, project, symlinks=True)
    report = json.loads((project / "reports" / "validation.json").read_text())
    assert report["success"] and report["pairs"] == 18
    assert (project / "reports" / "data_docs" / "index.html").exists()
    assert (project / "data" / "manifest.parquet").exists()

    shards = sorted((project / "data" / "augmented").glob("*.tfrecord"))
    assert {p.name.split("-")[0] for p in shards} == {"train", "val", "test"}
    stats = json.loads((project / "data" / "augmented" / "stats.json").read_text())
    assert stats["size"] == 32 and stats["pos_weight"] > 0 and stats["n"]["train"] >= 12
    bins = (project / "reports" / "augment_bins.csv").read_text().splitlines()
    assert bins[0] == "bin,before,requested,after" and len(bins) >= 2
    assert (project / "reports" / "augment_samples.png").exists()

    # Unchanged data: prepare re-scans, but nothing after it re-runs.
    again = dvc(project, "repro", "augment")
    assert again.returncode == 0
    assert "Stage 'validate' didn't change, skipping" in again.stdout
    assert "Stage 'augment' didn't change, skipping" in again.stdout
    # Forced re-run with the same params: byte-identical shards.
    before = {p.name: p.read_bytes() for p in shards}
    forced = dvc(project, "repro", "-f", "-s", "augment")
    assert forced.returncode == 0, forced.stderr
    assert {p.name: p.read_bytes() for p in sorted((project / "data" / "augmented").glob("*.tfrecord"))} == before


def test_repro_stops_on_bad_user_data_naming_the_files(project, tmp_path, browser):
    data = tmp_path / "user_data"
    for g in range(4):
        for f in range(3):
            write_pair(data, f"item{g}_{f}", size=(96, 72), seed=10 * g + f)
    (data / "images" / "item1_2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    p = data / "images" / "item2_0.png"
    Image.open(p).transpose(Image.Transpose.ROTATE_90).save(p)
    set_params(project, {"prepare.source": str(data), "prepare.splits": {"train": 0.5, "val": 0.25, "test": 0.25},
                         "validate.split_tolerance": 0.3})

    run = dvc(project, "repro", "augment")
    assert run.returncode != 0
    assert not (project / "data" / "augmented").exists()  # stopped before any training data
    assert "item1_2.png" in run.stderr and "every image decodes" in run.stderr
    assert "item2_0.png" in run.stderr and "same aspect ratio" in run.stderr
    assert "Traceback" not in run.stderr
    report = json.loads((project / "reports" / "validation.json").read_text())
    failed = {u["name"] for f in report["failures"] for u in f.get("unexpected", [])}
    assert failed == {"item1_2", "item2_0"}
    # The Data Docs page of this run, in a real browser: a person sees the failure and the files.
    assert report["data_docs"] in run.stderr
    page = browser.open((project / report["data_docs"]).as_uri(), "Status: Failed", shot="data-docs-bad-data")
    assert "Unsuccessful Expectations" in page and "unexpected values found" in page


def test_missing_data_folder_is_a_clear_error(project, tmp_path):
    set_params(project, {"prepare.source": str(tmp_path / "nowhere")})
    run = dvc(project, "repro", "prepare")
    assert run.returncode != 0
    assert "prepare: " in run.stderr and "nowhere/images is not a folder" in run.stderr
    assert "Traceback" not in run.stderr


def test_full_repro_tracks_everything_and_registers_what_evaluate_scored(full_run, tmp_path):
    project, run = full_run
    assert run.returncode == 0, run.stdout + run.stderr
    # Quiet logs: TensorFlow's native start-up notices and Keras' own epoch output stay out.
    assert "oneDNN" not in run.stderr and "absl::InitializeLog" not in run.stderr and "ETA" not in run.stdout
    summary = json.loads((project / "reports" / "train.json").read_text())
    assert summary["epochs_run"] == 2 and 0 <= summary["val"]["iou"] <= 1

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    r = client.get_run(summary["run_id"])
    assert r.data.params["model.family"] == "unet" and r.data.params["train.epochs"] == "2"
    # tune ran first; its best values listed under tune.apply reached train.
    best = json.loads((project / "data" / "tune" / "best_params.json").read_text())
    assert r.data.params["train.learning_rate"] == str(best["apply"]["train.learning_rate"])
    assert r.data.params["train.batch_size"] == str(best["apply"]["train.batch_size"])
    parent = client.search_runs([r.info.experiment_id], "tags.stage = 'tune' and attributes.run_name LIKE 'tune-%'")
    assert len(parent) == 1 and parent[0].data.metrics["trials/complete"] + parent[0].data.metrics["trials/pruned"] == 2
    assert len(client.search_runs([r.info.experiment_id], f"tags.mlflow.parentRunId = '{parent[0].info.run_id}'")) == 2
    # The run's datasets: train, val and test, each with the manifest as its source.
    inputs = {d.dataset.name: d.dataset for d in r.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val", "test"} and all("manifest.parquet" in d.source for d in inputs.values())

    # export chose the serving set-up on val; the served folder is what evaluate scored and register logged.
    serving = json.loads((project / "models" / "served" / "serving.json").read_text())
    exported = json.loads((project / "reports" / "export.json").read_text())
    assert serving["size"] == exported["size"] in (32, 48) and serving["runtime"] == "onnxruntime"  # a unet too
    assert set(exported["val_by_size"]) == {"32", "48"} and exported["refine"] in exported["val_by_refine"]
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    baseline = json.loads((project / "reports" / "baseline.json").read_text())
    assert set(metrics) == HEADLINE | DIS | {"size", "ms_per_image"} and set(baseline) == HEADLINE | DIS
    assert metrics["size"] == serving["size"] and all(0 <= metrics[k] <= 1 for k in HEADLINE | DIS - {"hce"})
    assert metrics["hce"] >= 0
    # dvc metrics show prints exactly these: the numbers the champion gate compared.
    shown = json.loads(dvc(project, "metrics", "show", "--json").stdout)
    files = next(iter(shown.values()))["data"]
    assert {Path(f).name for f in files} == {"metrics.json", "baseline.json"}
    registered = json.loads((project / "reports" / "registered.json").read_text())
    assert registered["alias"] == "champion" and registered["run_id"] == r.info.run_id
    assert registered["score"] == metrics["max_f"] and "first model" in registered["reason"]
    # the gate's report: every score of the model beside stock U²-NetP's, the DIS measures among them
    assert set(registered["scores"]) == HEADLINE | DIS
    assert registered["scores"]["hce"] == {"model": metrics["hce"], "stock_u2netp": baseline["hce"],
                                           "ahead": metrics["hce"] < baseline["hce"]}
    for name in ("eval_worst.png", "cutouts.png", "pr_curve.csv", "iou_hist.csv", "pr_curve_baseline.csv"):
        assert (project / "reports" / name).exists(), name

    # The registered version: its test scores are metrics of its logged model, on the test dataset.
    mv = client.get_model_version_by_alias("bgremoval", "champion")
    assert str(mv.version) == registered["version"] and mv.run_id == r.info.run_id
    logged = {m.key: m for m in client.get_logged_model(model_id_of(mv)).metrics if m.dataset_name == "test"}
    assert logged["test/max_f"].value == pytest.approx(metrics["max_f"]) and logged["test/max_f"].dataset_digest
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    assert mlflow.models.Model.load(f"models:/bgremoval/{mv.version}").flavors["python_function"]["config"] == serving

    # Re-running with nothing changed changes nothing.
    again = dvc(project, "repro")
    assert again.returncode == 0
    for stage in ("tune", "train", "export", "baseline", "evaluate", "register"):
        assert f"Stage '{stage}' didn't change, skipping" in again.stdout, stage
    assert {"git.commit", "dvc.augmented_md5", "data.sha256"} <= set(r.data.tags)
    assert len(client.get_metric_history(r.info.run_id, "val/iou")) == 2

    # The champion cuts out a photo through the CLI, by its default (the registry's champion) and from the folder.
    photo = next((project / "data" / "sample" / "images").iterdir())
    for model, out in ((None, tmp_path / "by-alias"), ("models/served", tmp_path / "by-folder")):
        cli = subprocess.run([str(Path(sys.executable).parent / "bgremoval"), "predict", str(photo), str(out),
                              *(["--model", model] if model else [])],
                             cwd=project, env=project_env(), capture_output=True, text=True, timeout=300)
        assert cli.returncode == 0, cli.stderr
        cut = Image.open(out / f"{photo.stem}.png")
        assert cut.mode == "RGBA" and cut.size == Image.open(photo).size  # serve.defaults.output: cutout


def test_an_edit_to_how_a_cut_out_is_rendered_reruns_serving_stages_only(full_run, tmp_path):
    """Training imports nothing of serving: after an edit to serving/render.py, `dvc status` shows tune, train
    and distill up to date, and the stages that serve, score or ship the model changed."""
    project, run = full_run
    assert run.returncode == 0, run.stdout + run.stderr
    copy = tmp_path / "project"  # the shared run stays as it is
    shutil.copytree(project, copy, symlinks=True)
    render = copy / "bgremoval" / "serving" / "render.py"
    render.write_text(render.read_text() + "\n# an edit\n")
    status = dvc(copy, "status", "--json")
    assert status.returncode == 0, status.stderr
    changed = set(json.loads(status.stdout))
    assert {"validate", "export", "baseline", "evaluate", "register"} <= changed, changed
    assert not changed & {"augment", "tune", "train", "distill"}, changed


def _commit(project: Path, message: str) -> None:
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run([*git, "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", message], cwd=project, check=True)


@pytest.fixture(scope="module")
def experiments(full_run, tmp_path_factory):
    """The toy project after its first run, committed; then `mlflow run . -P ...` and `dvc exp run -S ...`."""
    source, run = full_run
    assert run.returncode == 0, run.stdout + run.stderr
    project = tmp_path_factory.mktemp("experiments") / "project"
    shutil.copytree(source, project, symlinks=True)
    _commit(project, "toy project and its first run")
    mlflow_run = subprocess.run([sys.executable, "-m", "mlflow", "run", ".", "--env-manager", "local",
                                 "--experiment-name", "from-mlflow-run", "-P", "train.patience=4"],
                                cwd=project, env=project_env(), capture_output=True, text=True, timeout=900)
    # A second experiment that changes the gate only: register re-runs, nothing before it.
    exp_run = dvc(project, "exp", "run", "-n", "gate-0.01", "-S", "register.min_delta=0.01")
    return project, mlflow_run, exp_run


def test_mlflow_run_runs_the_pipeline_and_its_stages_log_under_its_run(experiments):
    project, run, _ = experiments
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("from-mlflow-run")
    (owner,) = client.search_runs([experiment.experiment_id], "tags.`mlflow.project.entryPoint` = 'main'")
    assert owner.info.status == "FINISHED"
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{owner.info.run_id}'")
    train = [c for c in children if c.data.tags.get("stage") == "train"]
    assert len(train) == 1 and train[0].data.params["train.patience"] == "4"  # -P reached params.yaml
    assert yaml.safe_load((project / "params.yaml").read_text())["register"]["min_delta"] == 0.01  # the later exp's
    # The model changed, the test data did not: the stock baseline was not scored again.
    assert "Stage 'baseline' didn't change, skipping" in run.stdout + run.stderr


def test_dvc_experiments_compare_on_their_headline_metrics(experiments):
    project, _, exp_run = experiments
    assert exp_run.returncode == 0, exp_run.stdout + exp_run.stderr
    assert "Stage 'evaluate' didn't change, skipping" in exp_run.stdout and "Running stage 'register'" in exp_run.stdout
    shown = json.loads(dvc(project, "exp", "show", "--json").stdout)
    rows = {}
    for commit in shown:
        rows[commit["rev"]] = commit
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                rows[rev.get("name") or rev["rev"]] = rev
    named = [name for name in rows if name not in ("workspace",) and len(name) < 40]
    assert "gate-0.01" in named and len(rows) >= 4  # workspace, the baseline commit and two experiments
    (retrained,) = [name for name in named if name != "gate-0.01"]  # the one `mlflow run` made
    for name, row in rows.items():
        data = row["data"]["metrics"]
        metrics = data[next(k for k in data if k.endswith("metrics.json"))]["data"]
        baseline = data[next(k for k in data if k.endswith("baseline.json"))]["data"]
        assert HEADLINE <= set(metrics) and {"size", "ms_per_image"} <= set(metrics), name
        assert {"max_f", "iou"} <= set(baseline), name
    diff = dvc(project, "metrics", "diff", "HEAD", retrained, "--json")
    assert diff.returncode == 0 and "metrics.json" in diff.stdout
    plots = dvc(project, "plots", "diff", "HEAD", retrained, "--json")
    assert plots.returncode == 0, plots.stderr
    shown = json.loads(plots.stdout)["data"]
    images = {Path(k).name: v for k, v in shown.items() if any(p.get("type") == "image" for p in v)}
    assert {"train_predictions.png", "eval_worst.png", "cutouts.png"} <= set(images)
    assert {r for p in images["cutouts.png"] for r in p["revisions"]} == {"HEAD", retrained}  # side by side
    assert "precision_recall" in shown and len(shown) == len({Path(k).name for k in shown})  # each plot once
