"""End to end: `dvc repro validate` in a temporary copy of the project, on good and on bad data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.conftest import ROOT, write_pair

pytestmark = pytest.mark.slow
_SKIP = {".git", ".venv", "data", "reports", "mlruns", "mlartifacts", "__pycache__", ".pytest_cache",
         ".hypothesis", "cache", "tmp", "mlflow.db", "optuna.db", "test-artifacts", ".checkpoints"}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the repo (code and config only) with a tiny sample, as its own git+DVC repo."""
    return copy_project(tmp_path / "project")


def copy_project(dst: Path) -> Path:
    """The repo's code and config in dst, with toy settings, as its own git + DVC repo."""
    shutil.copytree(ROOT, dst, ignore=lambda d, names: [n for n in names if n in _SKIP or n.endswith(".egg-info")])
    (dst / "dvc.lock").unlink(missing_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    set_params(dst, {"prepare.sample.n_scenes": 6, "prepare.sample.frames_per_scene": 3,
                     "prepare.sample.min_size": 64, "prepare.sample.max_size": 80,
                     "augment.size": 32, "augment.copies": 1,
                     "model.family": "unet", "model.unet_filters": [4, 8, 16],
                     "train.size": 32, "train.epochs": 2, "train.steps_per_epoch": 2, "train.batch_size": 4,
                     "train.freeze_epochs": 1,
                     "evaluate.baseline_size": 64,  # stock U²-NetP on the toy test images: only that it runs
                     "tune.n_trials": 2, "tune.epochs": 1, "tune.steps_per_epoch": 2, "tune.size": 32,
                     "tune.space": {"train.learning_rate": {"type": "float", "low": 0.0001, "high": 0.01, "log": True},
                                    "train.batch_size": {"type": "categorical", "choices": [2, 4]},
                                    "evaluate.size": {"type": "categorical", "choices": [32, 48]}}})
    return dst


def set_params(project: Path, overrides: dict) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    for key, value in overrides.items():
        node = params
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def dvc(project: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    extra = env or {}
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               GX_ANALYTICS_ENABLED="false")
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's own default: sqlite mlflow.db in the copy
    env.update(extra)
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)


def test_repro_through_augment_on_the_sample(project):
    run = dvc(project, "repro", "augment")
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((project / "reports" / "validation.json").read_text())
    assert report["success"] and report["pairs"] == 18
    assert (project / "reports" / "data_docs" / "index.html").exists()
    assert (project / "data" / "manifest.parquet").exists()

    shards = sorted((project / "data" / "augmented").glob("*.tfrecord"))
    assert {p.name.split("-")[0] for p in shards} == {"train", "val", "test"}
    stats = json.loads((project / "data" / "augmented" / "stats.json").read_text())
    assert stats["size"] == 32 and stats["pos_weight"] > 0 and stats["n"]["train"] >= 12
    augment = json.loads((project / "reports" / "augment.json").read_text())
    assert {b["bin"] for b in augment["bins"]} and (project / "reports" / "augment_samples.png").exists()

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
    assert "item2_0.png" in run.stderr and "same width" in run.stderr
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


def test_full_repro_tracks_everything_in_mlflow_and_registers_a_servable_champion(full_run, tmp_path):
    import mlflow

    project, run = full_run
    assert run.returncode == 0, run.stdout + run.stderr
    # Quiet logs: TensorFlow's native start-up notices and Keras' own epoch output stay out.
    assert "oneDNN" not in run.stderr and "absl::InitializeLog" not in run.stderr and "ETA" not in run.stdout
    assert (project / "models" / "model.keras").exists()
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
    trials = client.search_runs([r.info.experiment_id], f"tags.mlflow.parentRunId = '{parent[0].info.run_id}'")
    assert len(trials) == 2
    # Two objectives (params: tune.latency): the Pareto front is logged, the chosen serving size reaches evaluate.
    assert {"optimization_history.html", "pareto_front.html", "pareto_front.json"} <= {a.path for a in client.list_artifacts(parent[0].info.run_id)}
    assert best["trial"] in {t["trial"] for t in best["pareto_front"]} and best["latency_ms"] > 0
    assert all("serving/ms_per_image" in t.data.metrics for t in trials)
    # evaluate: the model and stock U²-NetP on the test split, logged to the training run.
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    keys = {"mae", "max_f", "iou", "dice", "boundary_f"}
    assert keys <= set(metrics) and keys == set(metrics["baseline"]) and metrics["n_images"] == 3
    assert metrics["size"] == best["apply"]["evaluate.size"]
    assert all(0 <= metrics[k] <= 1 for k in keys)
    # The refinement, chosen on val among the combinations params.yaml lists (evaluate.refine).
    from bgremoval.refine import Refine

    grid = yaml.safe_load((project / "params.yaml").read_text())["evaluate"]["refine"]
    tried = {Refine(f, m, k).name for f in grid["flip"] for m in grid["main_object"] for k in grid["sharpen"]}
    assert set(metrics["val_by_refine"]) == tried and Refine.from_dict(metrics["refine"]).name in tried
    assert (project / "reports" / "eval_worst.png").exists() and (project / "reports" / "pr_curve.csv").exists()
    r = client.get_run(summary["run_id"])
    assert {"test/max_f", "baseline/max_f"} <= set(r.data.metrics)
    # Re-running with nothing changed changes nothing.
    again = dvc(project, "repro")
    assert again.returncode == 0 and "Stage 'tune' didn't change, skipping" in again.stdout
    assert "Stage 'evaluate' didn't change, skipping" in again.stdout
    assert "Stage 'register' didn't change, skipping" in again.stdout
    assert {"git.commit", "dvc.augmented_md5", "data.sha256"} <= set(r.data.tags)
    assert r.data.tags["dvc.augmented_md5"].endswith(".dir")
    assert len(client.get_metric_history(r.info.run_id, "val/iou")) == 2
    assert "train_predictions.png" in {a.path for a in client.list_artifacts(r.info.run_id)}
    models = client.search_logged_models(experiment_ids=[r.info.experiment_id])
    assert any(m.source_run_id == r.info.run_id for m in models)
    # register: the first model becomes champion, logged as the servable pyfunc in the training run.
    registered = json.loads((project / "reports" / "registered.json").read_text())
    assert registered["alias"] == "champion" and registered["run_id"] == r.info.run_id
    assert registered["score"] == metrics["max_f"] and "first model" in registered["reason"]
    mv = client.get_model_version_by_alias("bgremoval", "champion")
    assert str(mv.version) == registered["version"] and mv.run_id == r.info.run_id
    assert float(mv.tags["metric.max_f"]) == pytest.approx(metrics["max_f"], abs=1e-6)
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")  # the version is served refined as evaluate chose
    logged = mlflow.models.Model.load(f"models:/bgremoval/{mv.version}").flavors["python_function"]["config"]  # model_config
    assert logged["refine"] == metrics["refine"] and mv.tags["refine"] == Refine.from_dict(metrics["refine"]).name
    # ... and it cuts out a photo through the CLI, from the registry by alias.
    photo = next((project / "data" / "sample" / "images").iterdir())
    out = tmp_path / "cut"
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}")
    cli = subprocess.run([str(Path(sys.executable).parent / "bgremoval"), "predict", "--output", "cutout", str(photo), str(out)],
                         cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert Image.open(out / f"{photo.stem}.png").mode == "RGBA"
    assert Image.open(out / f"{photo.stem}.png").size == Image.open(photo).size
    # evaluate.size_choices: the serving size is chosen on val with the trained weights, replacing tune's pick.
    set_params(project, {"evaluate.size_choices": [32, 48], "evaluate.size_tolerance": 0.0})
    chosen = dvc(project, "repro", "evaluate")
    assert chosen.returncode == 0, chosen.stdout + chosen.stderr
    assert "Stage 'tune' didn't change" in chosen.stdout and "Stage 'train' didn't change" in chosen.stdout
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    val_iou = {int(s): m["iou"] for s, m in metrics["val_by_size"].items()}
    assert set(val_iou) == {32, 48} and metrics["size"] == min(val_iou, key=lambda s: (-val_iou[s], s))
    history = client.get_metric_history(r.info.run_id, "size_choice/val_iou")
    assert {(h.step, round(h.value, 6)) for h in history} == {(s, round(v, 6)) for s, v in val_iou.items()}
